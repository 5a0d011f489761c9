"""Tests weighed by agreement (CodeT's dual execution agreement): a saboteur's test, or a
flood of tests only a buggy solution passes, cannot sink the code the tests agree on."""

from __future__ import annotations

from agents.evidence import (
    SuiteRun,
    TestSuite,
    agreement,
    check_independent_tests,
    check_own_tests,
    check_tests_pass,
)
from agents.evidence import tested_standing as standing_of  # not collected as a test

CORRECT, BUGGY, QA = "agent-dev-001", "agent-architect-001", "agent-qa-001"
SAB = "agent-sab-001"


def suite(candidate: str, expected: dict[str, int]) -> TestSuite:
    return TestSuite(
        candidate_id=candidate,
        solution="def f(): ...\n",
        tests={author: "..." for author in expected},
        expected=expected,
    )


def run(candidate: str, results: dict[str, dict[str, bool | None]]) -> SuiteRun:
    others = {a: r for a, r in results.items() if a != candidate}
    return SuiteRun(
        candidate_id=candidate,
        outcome="finished",
        passed={a: sum(ok is True for ok in r.values()) for a, r in others.items()},
        failed={a: sum(ok is False for ok in r.values()) for a, r in others.items()},
        results=results,
    )


def test_a_test_that_fails_every_solution_counts_for_nothing() -> None:
    runs = {
        CORRECT: run(CORRECT, {BUGGY: {"test_f": True}, QA: {"test_sabotage": False}}),
        BUGGY: run(BUGGY, {CORRECT: {"test_f": False}, QA: {"test_sabotage": False}}),
        QA: run(QA, {CORRECT: {"test_f": True}, BUGGY: {"test_f": True}, QA: {"test_sabotage": False}}),
    }
    agreed = agreement(runs.values())
    assert agreed[QA] == {"test_sabotage": 0.0}
    check = check_tests_pass(suite(CORRECT, {BUGGY: 1, QA: 1}), runs[CORRECT], True, agreed)
    assert check.score == 1.0 and check.passed
    assert "left out, agreeing with no solution: the tests of agent-qa-001" in check.detail
    # Counted plainly, the saboteur's test halves the correct code's share.
    assert check_tests_pass(suite(CORRECT, {BUGGY: 1, QA: 1}), runs[CORRECT], True).score == 0.5


def test_a_flood_of_tests_only_the_buggy_solution_passes_weighs_as_one_doubtful_member() -> None:
    flood = {f"test_quirk_{i}": True for i in range(10)}
    against_correct = {name: False for name in flood}
    runs = {
        CORRECT: run(CORRECT, {BUGGY: {"test_f": True}, QA: against_correct, CORRECT: {"test_f": True}}),
        BUGGY: run(BUGGY, {CORRECT: {"test_f": False}, QA: flood, BUGGY: {"test_f": False}}),
        "agent-data-001": run(
            "agent-data-001", {CORRECT: {"test_f": True}, BUGGY: {"test_f": True}, QA: against_correct}
        ),
    }
    agreed = agreement(runs.values())
    expected = {BUGGY: 1, QA: 10}
    correct = check_tests_pass(suite(CORRECT, expected), runs[CORRECT], True, agreed)
    buggy = check_tests_pass(suite(BUGGY, {CORRECT: 1, QA: 10}), runs[BUGGY], True, agreed)
    assert correct.score > buggy.score
    # Counted plainly, the flood decides.
    assert check_tests_pass(suite(CORRECT, expected), runs[CORRECT], True).score < 0.1


def test_a_test_that_gave_no_result_failed_there_and_counts_as_failed_at_its_own_weight() -> None:
    runs = {
        CORRECT: run(CORRECT, {QA: {"test_a": True, "test_b": True}}),
        BUGGY: run(BUGGY, {QA: {"test_a": True}}),  # test_b gave no result
    }
    agreed = agreement(runs.values())
    # Where its author's tests ran and it gave nothing, it did not pass: no agreement of 1.0
    # from the runs that happened to report it.
    assert agreed[QA] == {"test_a": 1.0, "test_b": 0.5}
    check = check_tests_pass(suite(BUGGY, {QA: 2}), runs[BUGGY], True, agreed)
    # At its own agreement, not its author's mean: a candidate that hangs on a test it would
    # fail gains nothing over failing it.
    assert check.score == round(1 / 1.5, 4) and not check.passed


def test_a_test_that_reported_on_no_solution_weighs_nothing_beside_its_author_s_others() -> None:
    # SAB wrote a copy of the correct code, an honest test, and a test that sleeps past the
    # wall clock (or skips) everywhere: it must not count against everyone but SAB.
    for never in ({}, {"test_hang": None}):
        runs = {
            CORRECT: run(CORRECT, {QA: {"test_f": True}, SAB: {"test_ok": True, **never}}),
            SAB: run(SAB, {QA: {"test_f": True}, SAB: {"test_ok": True, **never}}),
        }
        agreed = agreement(runs.values())
        assert agreed[SAB] == {"test_ok": 1.0}
        correct = check_tests_pass(suite(CORRECT, {QA: 1, SAB: 2}), runs[CORRECT], True, agreed)
        sab = check_tests_pass(suite(SAB, {QA: 1}), runs[SAB], True, agreed)
        assert correct.score == sab.score == 1.0, (correct.detail, sab.detail)


def test_a_skipped_test_counts_neither_way() -> None:
    runs = {
        CORRECT: run(CORRECT, {QA: {"test_a": True, "test_b": None}}),
        BUGGY: run(BUGGY, {QA: {"test_a": True, "test_b": None}}),
    }
    agreed = agreement(runs.values())
    assert agreed[QA] == {"test_a": 1.0}
    check = check_tests_pass(suite(CORRECT, {QA: 2}), runs[CORRECT], True, agreed)
    assert check.score == 1.0 and check.passed


def test_when_no_test_agrees_with_any_solution_the_code_is_untested() -> None:
    runs = {
        CORRECT: run(CORRECT, {QA: {"test_sabotage": False}}),
        BUGGY: run(BUGGY, {QA: {"test_sabotage": False}}),
    }
    check = check_tests_pass(suite(CORRECT, {QA: 1}), runs[CORRECT], True, agreement(runs.values()))
    assert not check.applicable and "no test left to count" in check.detail


def test_a_test_only_its_author_s_solution_passes_puts_no_one_else_among_the_failed() -> None:
    # X wrote a copy and a test that only the copy passes; H wrote honest tests.
    x, h = "agent-x-001", "agent-h-001"
    runs = {CORRECT: run(CORRECT, {h: {"test_f": True}, x: {"test_mine": False}})}
    runs[BUGGY] = run(BUGGY, {h: {"test_f": False}, x: {"test_mine": False}})
    runs[x] = run(x, {h: {"test_f": True}, x: {"test_mine": True}})
    agreed = agreement(runs.values())
    assert agreed[x] == {"test_mine": 1 / 3}
    standing = {}
    for candidate, others in ((CORRECT, {h: 1, x: 1}), (BUGGY, {h: 1, x: 1}), (x, {h: 1})):
        check = check_tests_pass(suite(candidate, others), runs[candidate], True, agreed)
        standing[candidate] = standing_of(check, suite(candidate, others), runs[candidate], agreed)
    # Counted as any failure, the correct code would stand with the buggy one, below X's copy.
    assert standing == {CORRECT: "passed", BUGGY: "failed", x: "passed"}


# -- issue 33: independent testers, and code that fails its own author's tests -------------

MUTANT_A, MUTANT_B = "agent-devops-001", "agent-data-001"


def test_a_testers_tests_count_plainly_for_every_solution_whatever_the_solutions_agree_on() -> None:
    # Two wrong solutions that agree pass each other's tests; the tester's (QA, no solution)
    # only the right one passes. Weighed by agreement the pair wins; the tester's count says not.
    runs = {
        CORRECT: run(CORRECT, {MUTANT_A: {"t": False}, MUTANT_B: {"t": False}, QA: {"q1": True, "q2": True}}),
        MUTANT_A: run(
            MUTANT_A, {CORRECT: {"t": False}, MUTANT_B: {"t": True}, QA: {"q1": False, "q2": True}}
        ),
        MUTANT_B: run(
            MUTANT_B, {CORRECT: {"t": False}, MUTANT_A: {"t": True}, QA: {"q1": False, "q2": True}}
        ),
    }
    agreed = agreement(runs.values())
    checks = {
        agent: check_independent_tests(
            suite(agent, {a: 1 for a in runs[agent].results if a != agent}).model_copy(
                update={"testers": [QA]}
            ),
            runs[agent],
            agreed,
            code_expected=True,
            council_has_testers=True,
        )
        for agent in runs
    }
    assert checks[CORRECT] is not None and checks[CORRECT].passed
    assert (
        checks[CORRECT].detail
        == "2 of 2 tests by members without a solution of their own pass (agent-qa-001)"
    )
    wrong = checks[MUTANT_A]
    assert wrong is not None and wrong.score == 0.5
    assert wrong.detail.endswith("; failed: agent-qa-001: q1")
    # A test no solution passes is no evidence, here as in the weighing.
    never = agreement([run(CORRECT, {QA: {"q": False}}), run(MUTANT_A, {QA: {"q": False}})])
    tester_only = suite(CORRECT, {QA: 1}).model_copy(update={"testers": [QA]})
    assert check_independent_tests(tester_only, run(CORRECT, {QA: {"q": False}}), never, True, True) is None
    # The tester's own proposal is no solution: it fails the check, as it fails tests_pass.
    tests_only = TestSuite(candidate_id=QA, solution="", tests={CORRECT: "..."}, expected={CORRECT: 1})
    assert not check_independent_tests(
        tests_only, None, agreed, code_expected=True, council_has_testers=True
    ).passed


def test_code_failing_a_test_its_own_author_wrote_that_another_solution_passes_contradicts_itself() -> None:
    own = "def test_f(): ...\n"
    runs = {
        CORRECT: run(CORRECT, {BUGGY: {"test_f": True}, CORRECT: {"test_f": True}}),
        BUGGY: run(BUGGY, {CORRECT: {"test_f": False}, BUGGY: {"test_f": False, "test_never": False}}),
    }
    agreed = agreement(runs.values())
    buggy = check_own_tests(suite(BUGGY, {CORRECT: 1}).model_copy(update={"own": own}), runs[BUGGY], agreed)
    assert buggy is not None and not buggy.passed
    # Its test_never passes no solution: a broken test, not a contradiction, so not counted.
    assert buggy.detail == "its code passes 0 of its author's 1 tests that some solution passes; not: test_f"
    correct = check_own_tests(
        suite(CORRECT, {BUGGY: 1}).model_copy(update={"own": own}), runs[CORRECT], agreed
    )
    assert correct is not None and correct.passed
    # No tests of its own: nothing to contradict.
    assert check_own_tests(suite(CORRECT, {BUGGY: 1}), runs[CORRECT], agreed) is None
