"""One schema for every job: pydantic models derived from the settings dataclasses.

The settings dataclasses (`dynamictrl.settings`: `GenerateSettings` with its nested
`PipelineOptions`, `PoseSettings`; `LipSyncSettings`) are the single source of truth.
`settings_model(cls)` turns one into a pydantic model field by field (type, default or
default factory, and the field metadata `help`/`description`, `min`/`ge`, `max`/`le`,
`choices`), so a field added, renamed or nested there is in the job schema, the gateway's
OpenAPI page and its 422 answers without a change here. A settings model also builds the
dataclass (its own `__post_init__` rules run) and applies `dynamictrl.validation`'s checks,
the ones `Studio` runs before any model loads. Settings written in the older flat form (the
memory options beside the others) are nested first, as `settings_from_dict` does.

`job_model(extra_kinds)` is the union of the job kinds (see `dynamictrl.serve.jobs`),
told apart by `kind`; `validate_job(job)` checks a job dict against it and raises
`JobError` with one line per problem, each naming the field.
"""

import dataclasses
import types
import typing
from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    ValidationError,
    create_model,
    model_validator,
)

from ..settings import nest_flat

KINDS = ("generate", "pose", "lipsync", "mask", "caption")
# The input files of each kind: a path (str) in the job, or the same name under "files".
INPUT_ROLES = {
    "generate": ("image", "pose_video", "driving_video"),
    "pose": ("image", "driving_video"),
    "lipsync": ("video", "audio"),
    "mask": ("image",),
    "caption": ("image",),
}
REQUIRED_INPUTS = {
    "generate": ("image",),
    "pose": ("image", "driving_video"),
    "lipsync": ("video", "audio"),
    "mask": ("image",),
    "caption": ("image",),
}
# The kinds that write an mp4 + manifest (and can be skipped when both exist).
FILE_KINDS = ("generate", "pose", "lipsync")


class JobError(ValueError):
    """A job that cannot run as written (the user's to fix; never retried)."""


# ------------------------------------------------------------------ settings -> models
def _annotation(tp):
    """The pydantic type of a dataclass field type (nested dataclasses become models)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return settings_model(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_annotation(arg) for arg in args)]  # noqa: UP007 (a union built from a computed tuple)
    if origin is list and args:
        return list[_annotation(args[0])]
    if origin in (tuple, dict) and args:
        return origin[tuple(arg if arg is Ellipsis else _annotation(arg) for arg in args)]
    return tp


def _field(field: dataclasses.Field, annotation):
    metadata = field.metadata or {}
    options = {}
    description = metadata.get("help") or metadata.get("description")
    if description:
        options["description"] = str(description)
    for ours, theirs in (("min", "ge"), ("ge", "ge"), ("max", "le"), ("le", "le"), ("gt", "gt"), ("lt", "lt")):
        if metadata.get(ours) is not None:
            options[theirs] = metadata[ours]
    if metadata.get("choices"):
        annotation = Literal[tuple(metadata["choices"])]
        if _is_optional(field.type):
            annotation = annotation | None
    if field.default is not dataclasses.MISSING:
        return annotation, Field(field.default, **options)
    if field.default_factory is not dataclasses.MISSING:
        return annotation, Field(default_factory=field.default_factory, **options)
    return annotation, Field(..., **options)


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


@cache
def settings_model(cls: type) -> type[BaseModel]:
    """The pydantic model of a settings dataclass: the same fields, types and defaults;
    unknown names refused; valid values also pass the dataclass's own rules."""
    hints = typing.get_type_hints(cls)
    definitions = {
        field.name: _field(field, _annotation(hints[field.name])) for field in dataclasses.fields(cls) if field.init
    }

    def check(model):
        try:
            instance = to_dataclass(cls, model)
            for rule in _settings_rules().get(cls, ()):
                rule(instance)
        except (ValueError, TypeError) as error:
            raise ValueError(str(error)) from None
        return model

    def nest(_model, values):  # before the fields are read: older flat settings nested
        return nest_flat(cls, values) if isinstance(values, dict) else values

    return create_model(
        cls.__name__,
        __config__=ConfigDict(extra="forbid"),
        __doc__=cls.__doc__,
        __validators__={
            "nest": model_validator(mode="before")(classmethod(nest)),
            "rules": model_validator(mode="after")(check),
        },
        **definitions,
    )


def to_dataclass(cls: type, values):
    """The dataclass built from a validated model or a dict (nested dataclasses too);
    the dataclass's `__post_init__` rules raise ValueError here."""
    if isinstance(values, BaseModel):
        values = {name: getattr(values, name) for name in type(values).model_fields}
    hints = typing.get_type_hints(cls)
    built = {}
    for name, value in values.items():
        built[name] = _build(hints.get(name), value)
    return cls(**built)


def _build(tp, value):
    if isinstance(value, BaseModel) or isinstance(value, dict):
        target = next(
            (t for t in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(t) and isinstance(t, type)), None
        )
        if target is not None:
            return to_dataclass(target, value)
    return value


def settings_from(cls: type, values: dict | None, what: str):
    """`values` (a job's settings object) validated and built into `cls`."""
    try:
        model = settings_model(cls).model_validate(values or {})
    except ValidationError as error:
        raise JobError(describe(error, prefix=what)) from None
    return to_dataclass(cls, model)


def _settings_rules() -> dict:
    """The checks `Studio` applies to settings before loading anything (its limits come
    from this process's environment, `DYNAMICTRL_MAX_*`): run here too, so a job that
    would be refused on a replica is refused at submission with the field named."""
    from ..limits import default_limits
    from ..settings import GenerateSettings, PoseSettings
    from ..validation import check_generate_settings, check_pose_settings

    return {
        GenerateSettings: (lambda s: check_generate_settings(s, default_limits()),),
        PoseSettings: (lambda s: check_pose_settings(s, default_limits()),),
    }


# ------------------------------------------------------------------ jobs
class FileByValue(BaseModel):
    """An input carried in the job: bytes (Ray handle) or base64 text (HTTP)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., max_length=1000)
    data: bytes | str = Field(..., description="the file's bytes, base64-encoded over HTTP")


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str | None = Field(None, max_length=200, description="a caller's name for the job (batch files)")
    max_retries: int | None = Field(None, ge=0, description="reruns if its replica dies (at most the service's)")
    return_files: bool = Field(False, description="send every output back as bytes instead of writing paths")

    @model_validator(mode="after")
    def _inputs_present(self):
        kind = self.kind
        files = self.files or {}
        for role in files:
            if role not in INPUT_ROLES[kind]:
                raise ValueError(
                    f"files.{role}: a {kind} job has no input {role!r} (inputs: {', '.join(INPUT_ROLES[kind])})."
                )

        def given(role):
            return bool(getattr(self, role, None)) or role in files

        if kind == "generate" and given("pose_video") == given("driving_video"):
            raise ValueError("A generate job needs exactly one of 'pose_video' or 'driving_video'.")
        missing = [role for role in REQUIRED_INPUTS[kind] if not given(role)]
        if missing:
            raise ValueError(f"A {kind} job needs {', '.join(repr(m) for m in missing)} (a path or files.<name>).")
        if kind in FILE_KINDS and not str(self.out).lower().endswith(".mp4"):
            raise ValueError(f"out: a {kind} job writes an .mp4, got {self.out!r}.")
        return self


def _input_fields(kind: str) -> dict:
    """One optional path per input role, and `files` keyed by those roles."""
    paths = {
        role: (str | None, Field(None, description=f"{role} file: a path the replicas can read"))
        for role in INPUT_ROLES[kind]
    }
    return {
        **paths,
        "files": (dict[str, FileByValue] | None, Field(None, description="inputs by value, keyed by role")),
    }


@cache
def _builtin_job_models() -> tuple[type[BaseModel], ...]:
    from ..lipsync.settings import LipSyncSettings
    from ..settings import MASK_MODES, GenerateSettings, PoseSettings
    from ..validation import MAX_SIDE, MIN_SIDE

    out = (str, Field(..., description="the .mp4 to write (relative: in the service's outputs folder)"))
    generate = create_model(
        "GenerateJob",
        __base__=_Job,
        kind=(Literal["generate"], ...),
        **_input_fields("generate"),
        out=out,
        settings=(settings_model(GenerateSettings), ...),
        pose_settings=(settings_model(PoseSettings) | None, None),
        pose_provenance=(dict[str, Any] | None, None),
        preview_every=(
            int | None,
            Field(
                None,
                ge=1,
                le=1000,
                description=(
                    "live previews every N denoising steps (and at the last): the job's status carries the latest "
                    "(`preview`, asked for with preview_after)"
                ),
            ),
        ),
    )
    pose = create_model(
        "PoseJob",
        __base__=_Job,
        kind=(Literal["pose"], ...),
        **_input_fields("pose"),
        out=out,
        preview=(str | None, None),
        json_path=(str | None, Field(None, alias="json")),
        settings=(settings_model(PoseSettings) | None, None),
    )
    lipsync = create_model(
        "LipSyncJob",
        __base__=_Job,
        kind=(Literal["lipsync"], ...),
        **_input_fields("lipsync"),
        out=out,
        settings=(settings_model(LipSyncSettings) | None, None),
    )
    mask = create_model(
        "MaskJob",
        __base__=_Job,
        kind=(Literal["mask"], ...),
        **_input_fields("mask"),
        mode=(Literal[MASK_MODES], ...),
        width=(int, Field(..., ge=MIN_SIDE, le=MAX_SIDE)),
        height=(int, Field(..., ge=MIN_SIDE, le=MAX_SIDE)),
        points=(
            list[tuple[float, float, Literal[0, 1]]] | None,
            Field(None, max_length=64, description="SAM clicks [x, y, 1 include / 0 exclude]"),
        ),
        dilate_px=(int, Field(0, ge=0, le=256)),
    )
    caption = create_model(
        "CaptionJob",
        __base__=_Job,
        kind=(Literal["caption"], ...),
        **_input_fields("caption"),
        mask_mode=(Literal[MASK_MODES] | None, None),
    )
    return generate, pose, lipsync, mask, caption


class CustomJob(BaseModel):
    """A kind added through `ServeConfig.extra_kinds`: its handler checks its own fields."""

    model_config = ConfigDict(extra="allow")
    kind: str


@cache
def job_model(extra_kinds: tuple[str, ...] = ()) -> type[RootModel]:
    """The request body of POST /jobs: one of the built-in kinds (or an extra kind), chosen
    by `kind` (`.root` is the job's own model)."""
    members = list(_builtin_job_models())
    if extra_kinds:
        members.append(
            create_model(
                "CustomJob_" + "_".join(extra_kinds), __base__=CustomJob, kind=(Literal[tuple(extra_kinds)], ...)
            )
        )
    return type(
        "Job",
        # A union of computed members: ruff's UP007 fix would drop the Union, so it stays.
        (RootModel[Annotated[Union[tuple(members)], Discriminator("kind")]],),  # noqa: UP007
        {"__doc__": "A job: its `kind` says which fields it has."},
    )


def validate_job(job, extra_kinds=()) -> BaseModel:
    """The job as its kind's model, or JobError naming each bad field."""
    if not isinstance(job, dict):
        raise JobError(f"A job is a JSON object, got {type(job).__name__}.")
    try:
        return job_model(tuple(extra_kinds)).model_validate(job).root
    except ValidationError as error:
        raise JobError(describe(error, kinds=(*KINDS, *extra_kinds))) from None


def as_dict(model: BaseModel) -> dict:
    """A validated job back as the plain dict the workers take (only what the caller set)."""
    return model.model_dump(by_alias=True, exclude_unset=True)


def describe(error: ValidationError, prefix: str = "", kinds=KINDS) -> str:
    """One line per problem, each starting with the field's dotted path."""
    lines = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        if loc and loc[0] in kinds:
            loc = loc[1:]  # the union's tag: the kind is in the job already
        where = ".".join(part for part in ([prefix] if prefix else []) + loc)
        message = message_of(item, kinds)
        if (
            "input" in item
            and item["type"] not in ("missing", "extra_forbidden", "value_error")
            and not item["type"].startswith("union_tag")
            and not isinstance(item["input"], dict)
        ):
            message += f" (got {_short(item['input'])})"
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


def message_of(item: dict, kinds=KINDS) -> str:
    """A pydantic error's message in this project's words (the input is not repeated)."""
    if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
        given = item.get("ctx", {}).get("tag")
        return (
            f"Unknown job kind {given!r}" if given is not None else "A job needs 'kind'"
        ) + f": use one of {', '.join(kinds)}."
    if item["type"] == "extra_forbidden":
        return "unknown field (misspelt? the service's /docs page lists every field)"
    if item["type"] == "value_error" and "ctx" in item:
        return str(item["ctx"]["error"])
    return item["msg"]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
