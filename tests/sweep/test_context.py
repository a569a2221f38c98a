"""WorkerContext: what every trial and stage task of one invocation is handed, made from the options."""
from __future__ import annotations

import pickle

from kd_tune.storage.location import Storage
from kd_tune.sweep.context import WorkerContext
from kd_tune.sweep.options import SweepOptions


def test_the_context_of_an_invocation_names_the_sweeps_places_and_settings(tmp_path):
    options = SweepOptions(name="s", storage=tmp_path, checkpoint_every=3, feature_classes=(1, 4), log_models=True,
                           local_cache=tmp_path / "copies")
    one, two = WorkerContext.of(options), WorkerContext.of(options)
    assert one.teachers_dir == str(tmp_path / "teachers") and one.logits_dir == str(tmp_path / "teacher_logits")
    assert one.noise_dir == str(options.noise_dir) and one.local_cache == str(tmp_path / "copies")
    assert (one.schedule.checkpoint_every, one.feature_classes, one.log_models) == (3, (1, 4), True)
    assert (one.schedule.checkpoint_every_s, one.schedule.report_every_s) == (30.0, 10.0)  # the defaults
    assert one.check_token and one.check_token != two.check_token  # one token per invocation
    assert WorkerContext.of(options, "t").check_token == "t"
    assert pickle.loads(pickle.dumps(one)) == one
    cache = one.logit_cache()
    assert cache.check_token == one.check_token and cache.root == tmp_path / "teacher_logits"
    assert one.teacher_store().storage.local_path == tmp_path / "teachers"


def test_an_object_store_travels_as_its_storage(s3_env):
    options = SweepOptions(name="s", storage=f"{s3_env.uri()}/sweeps")
    context = WorkerContext.of(options)
    assert isinstance(context.teachers_dir, Storage) and str(context.teachers_dir).endswith("/sweeps/teachers")
    secret = s3_env.env({})["AWS_SECRET_ACCESS_KEY"]
    assert secret.encode() not in pickle.dumps(context)  # workers read credentials from their own environment
