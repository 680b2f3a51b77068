"""The records (`paramdecomp.core.target.Target`) of the real models that the runners train and
decompose by `model.kind`, as `paramdecomp.toy_models.registry` holds the toys'; the runners look
a kind up in both (`paramdecomp.runs.targets.record_of`)."""
from __future__ import annotations

from paramdecomp.core.target import Target
from paramdecomp.models import cnn

TARGETS: dict[str, Target] = {t.kind: t for t in (
    Target("digits_cnn", cnn.model_config, cnn.init, lambda m: cnn.apply, cnn.data_config,
           task="classify", dataset=cnn.dataset),
)}
