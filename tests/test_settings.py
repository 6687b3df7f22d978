"""Settings: embedded defaults, validation, and secrets never shown in clear."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelpress.settings import Settings


def test_defaults_are_embedded_with_absolute_broker_folders(tmp_path):
    s = Settings(home=tmp_path)
    assert s.effective_broker_url == "filesystem://" and s.effective_database_url.startswith("sqlite:///")
    assert all(v.startswith("/") for v in s.broker_folders().values())
    assert s.visibility_timeout > s.task_time_limit


def test_a_soft_limit_not_below_the_hard_limit_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="SOFT_TIME_LIMIT"):
        Settings(home=tmp_path, task_soft_time_limit=100, task_time_limit=100)


def test_redacted_settings_hide_passwords(tmp_path):
    s = Settings(home=tmp_path, broker_url="redis://:hunter2@redis:6379/0",
                 database_url="postgresql+psycopg://mp:s3cret@db/mp", flower_basic_auth="admin:pw")
    text = repr(s.redacted())
    assert "hunter2" not in text and "s3cret" not in text and "admin:pw" not in text
    assert "***" in text
