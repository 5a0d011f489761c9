"""Confine this process, then exec a program in it: the sandbox's launcher.

Run as `python -I -S confine.py CONFIG_JSON PROGRAM [ARGS...]` by agents/adapters/sandbox.py, as a
child of the process that runs the tests. It uses the standard library only (no project
import: it starts with an empty environment and `-I -S`). Everything set here survives the
exec and binds the program and anything it loads:

- resource limits: CPU seconds, address space, file size, open files, no core files;
- as root, an empty capability bounding set (exec then grants no capability);
- no_new_privs, then Landlock: files are written only under the given write paths (the
  scratch directory) and read or executed only there, in the work directory and under the
  given read-only paths (Python's own prefixes and the system's libraries), so neither
  /proc/<pid>/environ nor anything else of the host's is readable, and the work directory
  (the suite, the project's files) cannot be changed; on ABI 6+ also no signals out of the
  sandbox;
- seccomp: no sockets (so no network, not even a Unix socket), no io_uring, no new
  processes (threads are allowed), no ptrace or reading another process's memory or file
  descriptors, signals only to itself, no mount, namespace, module or BPF calls.

It fails closed: if any layer cannot be set, it says why on the pipe `failure_fd` (closed
on exec, so only this launcher can write to it) and exits with CONFINE_FAILED.
x86_64 only (the syscall numbers below are x86_64's).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import struct
import sys

CONFINE_FAILED = 125

# prctl
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Landlock (linux/landlock.h)
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15  # ABI 3 and 5
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2

# seccomp (x86_64)
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM, ENOSYS = 1, 38
CLONE_THREAD = 0x00010000
SYS_CLONE, SYS_CLONE3, SYS_KILL, SYS_TGKILL = 56, 435, 62, 234
DENIED_SYSCALLS = {
    "socket": 41,
    "fork": 57,
    "vfork": 58,
    "ptrace": 101,
    "chroot": 161,
    "pivot_root": 155,
    "mount": 165,
    "umount2": 166,
    "reboot": 169,
    "init_module": 175,
    "delete_module": 176,
    "tkill": 200,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "bpf": 321,
    "userfaultfd": 323,
    "pidfd_send_signal": 424,
    "io_uring_setup": 425,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "pidfd_getfd": 438,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class ConfineError(Exception):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        raise ConfineError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    if platform.machine() != "x86_64":
        return 0
    version = _libc.syscall(
        SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(0, int(version))


def isolation_problem() -> str | None:
    """Why this machine cannot confine a program as this module does, or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the code sandbox needs Linux on x86_64 (this is {sys.platform} on {platform.machine()})"
    if landlock_abi() < 1:
        return (
            "the code sandbox needs Landlock (Linux 5.13+ with landlock among its LSMs); this kernel has none"
        )
    return None


def set_limits(config: dict) -> None:
    cpu = int(config["cpu_seconds"])
    # The soft limit sends SIGXCPU; the hard one, a second later, SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for limit, value in (
        (resource.RLIMIT_AS, int(config["memory_bytes"])),
        (resource.RLIMIT_FSIZE, int(config["file_bytes"])),
        (resource.RLIMIT_NOFILE, int(config["open_files"])),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))


def drop_capabilities() -> None:
    """As root: empty the bounding set, so the exec grants no capability (root's uid stays,
    its powers do not; the Landlock and seccomp layers bind it like anyone else)."""
    if os.geteuid() != 0:
        return
    with open("/proc/sys/kernel/cap_last_cap") as file:
        last = int(file.read())
    for capability in range(last + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0), "dropping capabilities")


def _add_path_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        attr = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr, packed
        _check(
            _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, attr, 0),
            f"Landlock rule for {path}",
        )
    finally:
        os.close(fd)


def restrict_files(config: dict) -> None:
    abi = landlock_abi()
    if abi < 1:
        raise ConfineError("Landlock is not available on this kernel")
    handled = FS_RIGHTS_BY_ABI[max(v for v in FS_RIGHTS_BY_ABI if v <= abi)]
    if abi >= 6:
        attr = struct.pack(
            "=QQQ", handled, NET_BIND_TCP | NET_CONNECT_TCP, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        )
    elif abi >= 4:
        attr = struct.pack("=QQ", handled, NET_BIND_TCP | NET_CONNECT_TCP)
    else:
        attr = struct.pack("=Q", handled)
    ruleset = _check(
        _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), 0), "Landlock"
    )
    try:
        for path in config["write_paths"]:
            _add_path_rule(ruleset, path, handled)
        for path in [config["workdir"], *config["read_paths"]]:
            _add_path_rule(ruleset, path, handled & (FS_EXECUTE | FS_READ_FILE | FS_READ_DIR))
        _add_path_rule(ruleset, "/dev/null", handled & (FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE))
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "Landlock restrict_self")
    finally:
        os.close(ruleset)


def seccomp_program(pid: int) -> list[tuple[int, int, int, int]]:
    """The filter, as (code, jt, jf, k) BPF instructions."""
    ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    nr, arch, arg0 = 0, 4, 16  # offsets in struct seccomp_data (arg0: its low 32 bits)
    body: list[tuple] = [
        (ld, arch),
        (jeq, AUDIT_ARCH_X86_64, None, "kill"),
        (ld, nr),
        (jge, X32_SYSCALL_BIT, "kill", None),
        *[(jeq, number, "deny", None) for number in sorted(DENIED_SYSCALLS.values())],
        # glibc falls back to clone() when clone3() is missing; clone()'s flags can be read.
        (jeq, SYS_CLONE3, "nosys", None),
        (jeq, SYS_CLONE, "clone", None),
        (jeq, SYS_KILL, "kill_self", None),
        (jeq, SYS_TGKILL, "tgkill_self", None),
        (ret, SECCOMP_RET_ALLOW),
        ("clone",),
        (ld, arg0),
        (jset, CLONE_THREAD, "allow", "deny"),
        ("kill_self",),
        (ld, arg0),
        (jeq, pid, "allow", None),
        (jeq, 0, "allow", "deny"),
        ("tgkill_self",),
        (ld, arg0),
        (jeq, pid, "allow", "deny"),
        ("allow",),
        (ret, SECCOMP_RET_ALLOW),
        ("deny",),
        (ret, SECCOMP_RET_ERRNO | EPERM),
        ("nosys",),
        (ret, SECCOMP_RET_ERRNO | ENOSYS),
        ("kill",),
        (ret, SECCOMP_RET_KILL_PROCESS),
    ]
    labels, position = {}, 0
    for item in body:
        if isinstance(item[0], str):
            labels[item[0]] = position
        else:
            position += 1
    program, position = [], 0
    for item in body:
        if isinstance(item[0], str):
            continue
        code, k, *targets = item
        jt, jf = (
            [0 if target is None else labels[target] - position - 1 for target in targets]
            if targets
            else [0, 0]
        )
        program.append((code, jt, jf, k))
        position += 1
    return program


def filter_syscalls() -> None:
    program = seccomp_program(os.getpid())
    raw = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buffer))  # struct sock_fprog
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    _check(
        _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buffer), 0, 0),
        "seccomp",
    )


def confine(config: dict) -> None:
    problem = isolation_problem()
    if problem is not None:
        raise ConfineError(problem)
    set_limits(config)
    drop_capabilities()
    restrict_files(config)
    filter_syscalls()


def main() -> None:
    config, program = json.loads(sys.argv[1]), sys.argv[2:]
    # Why confinement failed goes to the parent through this pipe, which the exec closes:
    # the program itself can neither write to it nor pass for a failed confinement.
    failures = int(config["failure_fd"])
    os.set_inheritable(failures, False)
    try:
        os.chdir(config["workdir"])
        confine(config)
    except (ConfineError, OSError, ValueError, KeyError) as exc:
        os.write(failures, f"cannot confine the program: {exc}".encode())
        os._exit(CONFINE_FAILED)
    os.execve(program[0], program, config["env"])


if __name__ == "__main__":
    main()
