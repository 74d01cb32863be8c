"""RunConfig: the one typed config of a run (model, lora, train, data), its YAML round trip, and the lookups the UI
and the CLI read labels and help from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import stages
from ..checks import parse_checks
from ..env.safeyaml import MAX_YAML_BYTES, load_yaml
from .fields import check_text, default_of, names, require, setting
from .sections import ColumnMapping, DataSettings, GenSettings, LoraSettings, ModelSettings, TrainSettings


@dataclass
class RunConfig:
    name: str = setting("run", "Run name", "A short name for this run; used for its folder and the export file.")
    model: ModelSettings = field(default_factory=ModelSettings, metadata={"label": "Model", "help": ""})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"label": "LoRA", "help": ""})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={"label": "Training", "help": ""})
    data: DataSettings = field(default_factory=DataSettings, metadata={"label": "Data", "help": ""})
    checks: list = field(default_factory=list, metadata={
        "label": "Checks", "help": "What a good answer is (valid JSON, the right number, short...): each check scores "
                                   "an answer from 0 to 1. They score the data's own answers before training, base "
                                   "vs tuned after it, and are the rewards of the grpo stage."})

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name.strip() != "", "Run name is empty: give the run a short name.")
        self.name = self.name.strip()
        for sect, cls in (("model", ModelSettings), ("lora", LoraSettings), ("train", TrainSettings),
                          ("data", DataSettings)):
            v = getattr(self, sect)
            if isinstance(v, dict):
                known = {f.name for f in fields(cls)}
                unknown = set(v) - known
                require(not unknown, f"Unknown setting(s) {names(unknown)} in section '{sect}': "
                                   f"known ones are {', '.join(sorted(known))}.")
                setattr(self, sect, cls(**v))
            else:
                require(isinstance(v, cls), f"Section '{sect}' must be a mapping of settings.")
        self.checks = [c.to_dict() for c in parse_checks(self.checks)]
        for key, v in self.flat().items():  # every text of every section and check, in one place
            *_, section, name = ["run", *key.split(".")]
            check_text(key, field_meta(section, name)["label"], v)

    def ready_to_train(self) -> None:
        """What a config may lack while it is edited but not when a run starts: ValueError with the sentence (the
        grpo stage without a check to reward, an experiment tracker that is not installed)."""
        if stages.get(self.train.stage).needs_checks:
            require(any(c.weight > 0 for c in self.check_list()),
                    f"The {self.train.stage} stage trains for the run's checks: add at least one check with a weight "
                    f"above 0 (the checks: section of the config; the Data tab's Checks panel writes it).")
        # here, not in TrainSettings: an old run set to wandb must still load (list, compare, export) without wandb
        from ..train.trackers import require_installed
        require_installed(self.train.report_to)

    def check_list(self) -> list:
        """The run's checks as studio.checks.Check objects (validated when the config was made)."""
        return parse_checks(self.checks)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"name": ..., "train.learning_rate": ..., ...}: every setting under its dotted name."""
        out: dict[str, Any] = {}
        for k, v in self.to_dict().items():
            if k == "checks":
                out[k] = v
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    if isinstance(vv, dict):  # data.columns
                        out.update({f"{k}.{kk}.{c}": x for c, x in vv.items()})
                    else:
                        out[f"{k}.{kk}"] = vv
            else:
                out[k] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        require(isinstance(d, dict), "A run config must be a mapping with sections model, lora, train, data "
                                     "(and checks).")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        require(not unknown, f"Unknown section(s) {names(unknown)}: known ones are "
                           f"{', '.join(sorted(known))}.")
        return cls(**d)

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str) -> "RunConfig":
        """The config in `text`; ValueError for more than 1 MB, bad YAML, an alias or nesting past 64 levels
        (studio.env.safeyaml.load_yaml, the loader of every user YAML)."""
        return cls.from_dict(load_yaml(text, "The config") or {})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        require(path.is_file(), f"Config file {path} does not exist.")
        size = path.stat().st_size
        require(size <= MAX_YAML_BYTES, f"Config file {path} is {size / 1e6:.1f} MB; a run config is a few KB, so "
                                        f"over {MAX_YAML_BYTES // 1_000_000} MB is refused: choose the right file.")
        try:
            return cls.from_yaml(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def replace(self, **sections: dict) -> "RunConfig":
        """A copy with some fields changed, e.g. cfg.replace(train={"max_steps": 5})."""
        d = self.to_dict()
        for sect, changes in sections.items():
            if isinstance(changes, dict):
                d[sect] = {**d[sect], **changes}
            else:
                d[sect] = changes
        return RunConfig.from_dict(d)


_SECTIONS = {"model": ModelSettings, "lora": LoraSettings, "train": TrainSettings, "data": DataSettings,
             "columns": ColumnMapping, "run": RunConfig, "gen": GenSettings}


def field_meta(section: str, name: str) -> dict:
    """{'label', 'help', and 'choices'/'minimum'/'maximum' when set} for one config field."""
    for f in fields(_SECTIONS[section]):
        if f.name == name:
            return {"default": default_of(f), **f.metadata}
    raise KeyError(f"{section}.{name}")


def field_names(section: str) -> list[str]:
    return [f.name for f in fields(_SECTIONS[section])]


def config_diff(configs: list[RunConfig]) -> list[str]:
    """The dotted names of the settings whose values are not the same in every config (the run name aside),
    in the config's own order."""
    flats = [c.flat() for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if k != "name" and len({repr(f.get(k)) for f in flats}) > 1]
