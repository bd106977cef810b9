"""The driver's Ray Train settings (components/training/driver.py): pure Python, no Ray."""

from __future__ import annotations

import os

from components.common.config import load_config
from components.training.driver import ray_train_env

INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def test_health_check_interval_reaches_ray_train_during_the_fit_only(monkeypatch):
    monkeypatch.delenv(INTERVAL, raising=False)
    cfg = load_config("tiny", ["pretrain.health_check_interval_s=0.25"])
    with ray_train_env(cfg):
        assert os.environ[INTERVAL] == "0.25"
    assert INTERVAL not in os.environ


def test_a_preexisting_setting_is_restored_after_the_fit(monkeypatch):
    monkeypatch.setenv(INTERVAL, "7")
    with ray_train_env(load_config("tiny")):
        assert os.environ[INTERVAL] == "0.5"
    assert os.environ[INTERVAL] == "7"


def test_ray_trains_preemption_watcher_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(WATCHER, raising=False)
    with ray_train_env(load_config("tiny")):
        assert os.environ[WATCHER] == "0"
    with ray_train_env(load_config("tiny", ["pretrain.preemption_watcher=true"])):
        assert os.environ[WATCHER] == "1"
    assert WATCHER not in os.environ
