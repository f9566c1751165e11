#!/usr/bin/env python3
"""A recording stand-in for the Azure CLI, for testing the infra scripts without a cloud.

Every call is appended to ``$AZ_STUB_LOG`` (a JSON list of arguments per line). Resources the
scripts create are kept in ``$AZ_STUB_STATE`` (JSON), so a second run sees them and a test can
check that nothing new was created. It answers only the commands the scripts use, with the
shapes the real CLI gives, ``--query`` evaluated by JMESPath as the real CLI does, ``-o tsv``
and ``-o none``. ``AZ_STUB_LOGGED_OUT=1`` makes ``account show`` fail as when not logged in;
``AZ_STUB_FAIL="vm create=ERROR TEXT"`` makes that command fail with that message.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import jmespath

SUB = "00000000-0000-0000-0000-000000000001"


def parse(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    words: list[str] = []
    opts: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") or (arg.startswith("-") and len(arg) == 2):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("-"):
                opts[arg.lstrip("-")] = True
                i += 1
            else:
                opts[arg.lstrip("-")] = nxt
                i += 2
        else:
            words.append(arg)
            i += 1
    return words, opts


def fail(message: str, code: int = 1) -> None:
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    argv = sys.argv[1:]
    with open(os.environ["AZ_STUB_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    state_path = Path(os.environ["AZ_STUB_STATE"])
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    for key in ("groups", "accounts", "containers", "vms", "roles", "uploads"):
        state.setdefault(key, [] if key in ("roles", "uploads") else {})
    words, opts = parse(argv)
    command = " ".join(words)
    for rule in filter(None, os.environ.get("AZ_STUB_FAIL", "").split(";")):
        target, _, message = rule.partition("=")
        if command.startswith(target):
            fail(message)
    result = answer(command, opts, state)
    state_path.write_text(json.dumps(state, indent=1))
    if "query" in opts:
        result = jmespath.search(opts["query"], result)
    output = opts.get("o") or opts.get("output") or "json"
    if output == "none" or (result is None and output == "tsv"):
        return
    if output == "tsv":
        print("\t".join(map(str, result)) if isinstance(result, list) else _scalar(result))
    else:
        print(json.dumps(result, indent=2))


def _scalar(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def answer(command: str, o: dict[str, Any], state: dict[str, Any]) -> Any:
    rg = o.get("resource-group") or o.get("g")
    if command == "version":
        return {"azure-cli": os.environ.get("AZ_STUB_VERSION", "2.91.0"), "extensions": {}}
    if command == "account show":
        if os.environ.get("AZ_STUB_LOGGED_OUT") == "1":
            fail("Please run 'az login' to setup account.")
        return {"id": SUB, "name": "demo-subscription", "user": {"name": "me@example.com"}}
    if command == "account set":
        return None
    if command == "ad signed-in-user show":
        return {"id": "user-object-id", "userPrincipalName": "me@example.com"}
    if command == "group show":
        if o["name"] not in state["groups"]:
            fail(f"Resource group '{o['name']}' could not be found.", 3)
        return {"name": o["name"], "location": state["groups"][o["name"]]}
    if command == "group create":
        state["groups"][o["name"]] = o["location"]
        return {"name": o["name"]}
    if command == "group exists":
        return o["name"] in state["groups"]
    if command == "group delete":
        state["groups"].pop(o["name"], None)
        return None
    if command == "storage account check-name":
        return {"nameAvailable": o["name"] not in state["accounts"]}
    if command == "storage account show":
        acct = state["accounts"].get(o["name"])
        if acct is None or acct["group"] != rg:
            fail(f"The Resource 'Microsoft.Storage/storageAccounts/{o['name']}' was not found.", 3)
        return {"name": o["name"], "id": acct["id"], "location": acct["location"]}
    if command == "storage account create":
        state["accounts"][o["name"]] = {
            "group": rg,
            "location": o["location"],
            "sku": o["sku"],
            "kind": o["kind"],
            "id": f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/{o['name']}",
        }
        return {"name": o["name"]}
    if command == "storage container-rm exists":
        return {"exists": f"{o['storage-account']}/{o['name']}" in state["containers"]}
    if command == "storage container-rm create":
        state["containers"][f"{o['storage-account']}/{o['name']}"] = True
        return {"name": o["name"]}
    if command == "storage container create":
        return {"created": True}
    if command == "storage blob upload-batch":
        files = sorted(p.name for p in Path(o["source"]).glob(o.get("pattern", "*")))
        record = {"account": o.get("account-name"), "container": o["destination"],
                  "prefix": o.get("destination-path"), "auth": o.get("auth-mode"), "files": files}  # fmt: skip
        state.setdefault("uploads", []).append(record)
        return [{"Blob": f"{record['prefix']}/{name}"} for name in files]
    if command in ("vm show", "vm identity assign"):
        vm = state["vms"].get(o["name"])
        if vm is None:
            fail(f"The Resource 'Microsoft.Compute/virtualMachines/{o['name']}' was not found.", 3)
        if command == "vm identity assign":
            return {"systemAssignedIdentity": vm["principalId"]}
        return {
            "name": o["name"],
            "identity": {"principalId": vm["principalId"], "type": "SystemAssigned"},
            "publicIps": vm["ip"] if o.get("show-details") or o.get("d") else None,
        }
    if command == "vm create":
        state["vms"][o["name"]] = {
            "group": rg,
            "location": o["location"],
            "size": o["size"],
            "image": o["image"],
            "identity": o.get("assign-identity"),
            "principalId": "vm-principal-id",
            "ip": "20.0.0.10",
        }
        return {"publicIpAddress": "20.0.0.10"}
    if command == "role assignment list":
        return [
            r
            for r in state["roles"]
            if r["assignee"] == o["assignee"]
            and r["role"] == o["role"]
            and r["scope"] == o["scope"]
        ]
    if command == "role assignment create":
        role = {"assignee": o["assignee-object-id"], "role": o["role"], "scope": o["scope"],
                "type": o["assignee-principal-type"]}  # fmt: skip
        state["roles"].append(role)
        return role
    fail(f"az stub: unsupported command {command!r}", 2)
    return None


if __name__ == "__main__":
    main()
