"""Runs inside a Pod's namespaces, then becomes the container's process (standard library only).

Started as `ip netns exec <ns> unshare -m -u --propagation private python -I -S <this file> SPEC [ARGV...]`:
sets the hostname, bind-mounts the volumes at their mountPath in the private mount namespace (the host
never sees them), changes to workingDir and execs the command (or ARGV, for exec probes). A failure
before the exec is written to the spec's errorFile and ends the process with exit code 128, which the
runtime reports as a StartError.
"""
import ctypes
import json
import os
import socket
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
START_ERROR_EXIT = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def _mount(source, target, flags):
    if _libc.mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source or ''} on {target}: {os.strerror(error)}")


def _ensure_target(target, is_file):
    if os.path.lexists(target):
        return
    os.makedirs(target if not is_file else os.path.dirname(target) or "/", exist_ok=True)
    if is_file:
        open(target, "a").close()


def bind(mount):
    _ensure_target(mount["target"], mount.get("isFile", False))
    _mount(mount["source"], mount["target"], MS_BIND | MS_REC)
    if mount.get("readOnly"):
        _mount(None, mount["target"], MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def launch(spec, argv):
    if spec.get("hostname"):
        socket.sethostname(spec["hostname"])
    for mount in spec.get("mounts", []):
        bind(mount)
    working_dir = spec.get("workingDir")
    if working_dir:
        os.makedirs(working_dir, exist_ok=True)
        os.chdir(working_dir)
    env = spec.get("env", {})
    os.execvpe(argv[0], argv, env)  # resolved on the container's PATH


def main():
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    argv = sys.argv[2:] or spec["argv"]
    try:
        launch(spec, argv)
    except Exception as error:  # noqa: BLE001 - any failure before exec is a start error
        message = f"failed to start container: {argv[0] if argv else '(no command)'}: {error}"
        try:
            with open(spec["errorFile"], "w") as file:
                file.write(message)
        except OSError:
            pass
        print(message, file=sys.stderr, flush=True)
        sys.exit(START_ERROR_EXIT)


if __name__ == "__main__":
    main()
