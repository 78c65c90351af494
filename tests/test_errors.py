"""The error family: built-in bases for library users, parameters shown as flags by the CLI."""

from __future__ import annotations

import pytest

from lorahive.cli.app import as_flags
from lorahive.hub import errors as E


@pytest.mark.parametrize("cls,builtin", [
    (E.InvalidRequestError, ValueError), (E.InvalidAdapterError, ValueError),
    (E.ShapeMismatchError, ValueError), (E.BaseModelMismatchError, ValueError),
    (E.InvalidReferenceError, ValueError), (E.UnsafeFileError, ValueError),
    (E.IntegrityError, ValueError), (E.AdapterNotFoundError, LookupError),
    (E.VersionNotFoundError, LookupError), (E.EntryNotFoundError, LookupError),
    (E.AuthenticationError, PermissionError), (E.PermissionDeniedError, PermissionError),
    (E.OfflineError, ConnectionError), (E.ServiceUnavailableError, ConnectionError),
])
def test_errors_refine_builtins(cls, builtin):
    with pytest.raises(builtin) as info:
        raise cls("what to do")
    assert isinstance(info.value, E.LorahiveError) and str(info.value) == "what to do"
    # rebuilt from its code on the client: the same class, so the same built-in
    assert isinstance(E.error_from_code(cls.code, "x"), builtin)


def test_library_messages_name_parameters_and_the_cli_shows_flags():
    from lorahive.compose.fusion import fuse

    with pytest.raises(ValueError, match=r"^give rank or rank_budget, not both$") as info:
        fuse([_tiny()], "task_arithmetic", rank=2, rank_budget=4)
    assert as_flags(info.value) == "give --rank or --rank-budget, not both"
    # words that merely contain a parameter name are left alone
    e = E.InvalidRequestError("ranks differ; rank must be at least 1", params="rank")
    assert as_flags(e) == "ranks differ; --rank must be at least 1"


def test_output_directory_check_is_one_rule(tmp_path):
    from lorahive.hub.atomic import require_free_dir

    (tmp_path / "d").mkdir()
    require_free_dir(tmp_path / "d")  # empty is fine
    (tmp_path / "d" / "f").write_text("x")
    with pytest.raises(E.InvalidRequestError, match="not empty") as info:
        require_free_dir(tmp_path / "d", param="to")
    assert as_flags(info.value).endswith("choose another --to")


def _tiny():
    import torch

    from lorahive.hub.adapter import Adapter, LoraModule

    g = torch.Generator().manual_seed(0)
    mod = LoraModule(A=torch.randn(2, 4, generator=g), B=torch.randn(4, 2, generator=g), scale=1.0)
    return Adapter.from_factors({"layers.0.q_proj": mod}, base_model="m")
