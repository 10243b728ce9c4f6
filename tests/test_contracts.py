"""The contract gate: `buf breaking` against the released baseline, as scripts/lint runs it.

Each test copies buf.yaml and proto/ to a temporary folder, edits a contract there and runs
the same check against the committed proto/released.txtpb (proto/README.md has the rules).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "proto" / "released.txtpb"
TYPES = "proto/natter/v1/types.proto"
CONTACTS = "proto/natter/v1/contact_service.proto"
FIELD = "  int64 sender_device_id = 5;\n"  # in message Message


def _buf() -> str:
    found = Path(sys.executable).with_name("buf")
    if found.exists():
        return str(found)
    which = shutil.which("buf")
    if which is None:
        pytest.fail("buf not found: run scripts/install (buf-bin)", pytrace=False)
    return which


@pytest.fixture
def contracts(tmp_path: Path) -> Path:
    """A copy of the contracts as they are in the working tree."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    return tmp_path


def edit(root: Path, path: str, old: str, new: str) -> None:
    file = root / path
    text = file.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    file.write_text(text.replace(old, new))


def breaking(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_buf(), "breaking", "--against", str(BASELINE)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_contracts_as_they_are_pass(contracts: Path) -> None:
    done = breaking(contracts)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_removed_field_fails(contracts: Path) -> None:
    edit(contracts, TYPES, FIELD, "")
    done = breaking(contracts)
    assert done.returncode != 0
    assert 'field "5" with name "sender_device_id" on message "Message" was deleted' in done.stdout


def test_a_renumbered_field_fails(contracts: Path) -> None:
    edit(contracts, TYPES, FIELD, "  int64 sender_device_id = 98;\n")
    done = breaking(contracts)
    assert done.returncode != 0
    assert 'field "5" with name "sender_device_id" on message "Message" was deleted' in done.stdout


def test_a_removed_rpc_fails(contracts: Path) -> None:
    edit(
        contracts,
        CONTACTS,
        "  rpc RemoveContact(RemoveContactRequest) returns (RemoveContactResponse);\n",
        "",
    )
    done = breaking(contracts)
    assert done.returncode != 0
    assert 'RPC "RemoveContact" on service "ContactService" was deleted' in done.stdout


def test_a_removal_with_number_and_name_reserved_passes(contracts: Path) -> None:
    edit(contracts, TYPES, FIELD, '  reserved 5;\n  reserved "sender_device_id";\n')
    done = breaking(contracts)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_new_field_passes(contracts: Path) -> None:
    edit(contracts, TYPES, FIELD, FIELD + "  // A new field.\n  string note = 99;\n")
    done = breaking(contracts)
    assert done.returncode == 0, done.stdout + done.stderr
