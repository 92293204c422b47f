"""Table-driven parametrisation for tests/optim.

A test that takes ``hd_name`` runs for every <op>-hd and <op>-hd-<lop> name in the registry;
``issue_name`` for every name that issue 2 defines; ``registered_name`` for every registered name
(CAM-HD included: only the shared create/step contract is checked over those).
"""

from __future__ import annotations

from optim_cases import ISSUE_NAMES, hd_names

from sensitivity.optim import available


def pytest_generate_tests(metafunc):
    if "hd_name" in metafunc.fixturenames:
        metafunc.parametrize("hd_name", hd_names())
    if "issue_name" in metafunc.fixturenames:
        metafunc.parametrize("issue_name", ISSUE_NAMES)
    if "registered_name" in metafunc.fixturenames:
        metafunc.parametrize("registered_name", list(available()))
