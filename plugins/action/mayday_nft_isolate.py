# Network isolation, the controller's half: works out the management path (the host's address and
# the controller's own address on it), runs the module's apply on the host (lease armed, then the
# table), then proves from this machine's own network stack that the management path still works: a
# fresh TCP connection to the host's management port and its banner. Proven: the lease is held for the
# full length (a second round trip over the same path). Not proven: reverted now and the task fails;
# if the host cannot even be told, the short probation lease reverts it on the host.
from __future__ import annotations

import ipaddress
import socket
import time

from ansible.plugins.action import ActionBase

MODULE = "mayday_nft_isolate"
SSH_CONNECTIONS = ("ssh", "paramiko", "paramiko_ssh", "smart")


def self_test(address: str, port: int, banner: str, attempts: int = 2, timeout: float = 3.0) -> dict:
    """A fresh connection (not the established session) from the controller to the management port."""
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(1)
        try:
            with socket.create_connection((address, port), timeout=timeout) as conn:
                if not banner:
                    return {"ok": True, "address": address, "port": port, "attempts": attempt + 1}
                conn.settimeout(timeout)
                got = conn.recv(256)
                if got.startswith(banner.encode()):
                    return {"ok": True, "address": address, "port": port, "attempts": attempt + 1,
                            "banner": got.split(b"\r\n", 1)[0].decode(errors="replace")}
                last = f"unexpected banner {got[:40]!r}"
        except OSError as exc:
            last = str(exc) or type(exc).__name__
    return {"ok": False, "address": address, "port": port, "attempts": attempts, "error": last}


def source_address(address: str) -> str:
    """The controller's own address toward `address`: the source the kernel picks (a UDP connect sends nothing)."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, 9))
        return str(sock.getsockname()[0])


def resolve(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return str(socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)[0][4][0])


class ActionModule(ActionBase):
    _supports_check_mode = True

    def _module(self, task_vars, **args):
        return self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        management = {"address": args.pop("management_address", "") or "",
                      "port": int(args.pop("management_port", 22) or 22),
                      "banner": args.pop("self_test_banner", "SSH-")}
        given_controller = [str(a) for a in args.pop("controller", []) or [] if str(a).strip()]
        if args.get("op") != "apply":
            if given_controller:
                args["controller"] = given_controller
            return dict(result, **self._module(task_vars, **args))

        facts = self._module(task_vars, op="inspect", host_label=args.get("host_label"))
        if facts.get("failed"):
            return dict(result, **facts)
        found = facts.get("facts", {})
        connection = str(getattr(self._connection, "transport", "") or "").split(".")[-1]
        try:
            if not management["address"]:
                if connection in SSH_CONNECTIONS:
                    management["address"] = resolve(self._templar.template(task_vars.get("ansible_host", "")))
                else:
                    management["address"] = found.get("primary", {}).get("v4") or found.get("primary", {}).get("v6")
            if not management["address"]:
                return dict(result, failed=True, refused=True, changed=False,
                            msg="the host's management address is unknown: set mayday_management_address")
            # The controller as the host sees it: the inventory's word, else the SSH session's client
            # (right behind NAT too), else this machine's source address toward the host.
            controller = given_controller or ([found["ssh_client"]] if found.get("ssh_client")
                                              else [source_address(management["address"])])
        except (OSError, ValueError) as exc:
            return dict(result, failed=True, refused=True, changed=False,
                        msg=f"the management path could not be worked out: {exc}")

        applied = self._module(task_vars, controller=controller, **args)
        applied.setdefault("report", {}).update(management=management, controller=controller)
        if applied.get("failed") or self._task.check_mode:
            return dict(result, **applied)

        test = self_test(management["address"], management["port"], management["banner"])
        applied["report"]["self_test"] = test
        if test["ok"]:
            held = self._module(task_vars, **dict(args, op="hold"))
            if held.get("failed"):
                msg = (f"self-test passed but the lease could not be held ({held.get('msg')}); the probation "
                       f"lease reverts the isolation at {applied['report'].get('lease', {}).get('expires')}")
                return dict(result, **dict(applied, failed=True, msg=msg, summary=msg, held=held))
            applied["report"].update(lease=held["report"].get("lease"), after=held["report"].get("after"))
            text = (f"{applied['msg']}; self-test from the controller to {management['address']}:"
                    f"{management['port']} passed; lease until {held['report']['lease']['expires']}")
            return dict(result, **dict(applied, msg=text, summary=text))

        # Locked out (or the path is wrong): undo now, over whatever channel Ansible still has.
        undone = self._module(task_vars, op="revert", host_label=args.get("host_label"))
        applied["report"]["revert"] = undone.get("report")
        if undone.get("failed"):
            tail = (f"the revert could not be sent ({undone.get('msg')}); the host reverts it itself at "
                    f"{applied['report'].get('lease', {}).get('expires')} (probation lease)")
        else:
            tail = "reverted"
        msg = (f"{args.get('host_label') or 'host'}: self-test failed: the controller could not reach "
               f"{management['address']}:{management['port']} after isolation ({test.get('error')}); {tail}")
        return dict(result, **dict(applied, failed=True, changed=True, reverted=not undone.get("failed"),
                                   msg=msg, summary=msg))
