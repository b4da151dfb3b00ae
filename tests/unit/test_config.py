"""Layered config: merge order, ${ENV} interpolation, --set, env wins, one-line errors."""
from pathlib import Path

import pytest

from jobs.config import ConfigError, deep_merge, interpolate_env, load_config, parse_override
from jobs.spark import spark_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return path


def test_default_is_base_plus_local():
    config = load_config(environ={})
    assert config.storage.root == "./var/storage"
    assert config.pii.effective_key() == "tailor-local-demo-key-not-secret"
    assert config.spark.master == "local[2]"


def test_env_file_overrides_base_and_set_overrides_both(tmp_path):
    conf = write(tmp_path, "storage:\n  root: /data/a\nspark:\n  master: local[1]\n")
    config = load_config(conf, ["storage.root=s3a://bucket/x", "sample.users=7"], environ={})
    assert config.storage.root == "s3a://bucket/x"
    assert config.spark.master == "local[1]"
    assert config.sample.users == 7
    assert config.mlflow.experiment == "tailor"  # untouched base value


def test_set_reaches_spark_conf_keys_with_dots():
    config = load_config(None, ["spark.conf.spark.sql.shuffle.partitions=3"], environ={})
    assert config.spark.conf["spark.sql.shuffle.partitions"] == "3"


def test_env_interpolation_with_and_without_default(tmp_path):
    conf = write(tmp_path, "storage:\n  root: ${DATA_ROOT}/tailor\nmlflow:\n"
                           "  tracking_uri: ${TRACKING:-sqlite:///x.db}\n")
    config = load_config(conf, environ={"DATA_ROOT": "/mnt"})
    assert config.storage.root == "/mnt/tailor"
    assert config.mlflow.tracking_uri == "sqlite:///x.db"
    with pytest.raises(ConfigError, match=r"storage.root: environment variable DATA_ROOT is not set"):
        load_config(conf, environ={})


def test_environment_wins_for_secrets_and_endpoints():
    config = load_config(environ={"TAILOR_PII_KEY": "from-env", "MLFLOW_TRACKING_URI": "http://m:5000",
                                  "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert config.pii.effective_key() == "from-env"
    assert config.mlflow.tracking_uri == "http://m:5000"
    assert config.storage.s3.endpoint == "http://127.0.0.1:9000"


def test_pii_key_cannot_come_from_a_file(tmp_path):
    conf = write(tmp_path, "pii:\n  key: oops\n")
    with pytest.raises(ConfigError, match=r"^config error: pii.key: unknown key$"):
        load_config(conf, environ={})


def test_no_pii_key_is_refused(tmp_path):
    conf = write(tmp_path, "pii:\n  demo_key: null\n")
    config = load_config(conf, environ={})
    with pytest.raises(ConfigError, match="TAILOR_PII_KEY"):
        config.pii.effective_key()


@pytest.mark.parametrize("override, message", [
    ("storage.rooot=/x", "config error: storage.rooot: unknown key"),
    ("sample.users=many", "config error: sample.users: Input should be a valid integer"),
    ("sample.users=-3", "config error: sample.users: Input should be greater than 0"),
    ("storage.s3.encryption_algorithm=ROT13", "config error: storage.s3.encryption_algorithm"),
    ("nonsense", "--set nonsense: expected key=value"),
])
def test_bad_values_name_the_key_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override], environ={})
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_missing_required_value(tmp_path):
    conf = write(tmp_path, "storage:\n  root: null\n")
    with pytest.raises(ConfigError, match="config error: storage.root"):
        load_config(conf, environ={})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "a: [1,\n"), environ={})


def test_pure_helpers():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    assert parse_override("a.b=true") == {"a": {"b": True}}
    assert interpolate_env(["${X}"], {"X": "1"}) == ["1"]


def test_spark_settings_s3a_from_config_and_env():
    config = load_config(None, ["storage.s3.endpoint=http://127.0.0.1:9000",
                                "storage.s3.path_style_access=true",
                                "storage.s3.encryption_algorithm=SSE-KMS"], environ={})
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "TAILOR_S3_KMS_KEY_ID": "kms-1"}
    settings = spark_settings(config, env)
    assert settings["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert settings["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert settings["spark.hadoop.fs.s3a.access.key"] == "AK"
    assert settings["spark.hadoop.fs.s3a.encryption.algorithm"] == "SSE-KMS"
    assert settings["spark.hadoop.fs.s3a.encryption.key"] == "kms-1"
    assert settings["spark.master"] == "local[2]"
    with pytest.raises(ConfigError, match="TAILOR_S3_KMS_KEY_ID"):
        spark_settings(config, {})


def test_configured_driver_jvm_options_are_kept_beside_tailors_log_settings():
    options = spark_settings(load_config(environ={}), {})["spark.driver.extraJavaOptions"]
    log_settings, configured = options.split(" ", 1)
    assert log_settings.startswith("-Dlog4j.configurationFile=file:")
    assert configured == "-XX:+UseParallelGC"  # conf/base.yaml's
    config = load_config(None, ["spark.conf.spark.driver.extraJavaOptions=-Xss4m"], environ={})
    assert spark_settings(config, {})["spark.driver.extraJavaOptions"] == f"{log_settings} -Xss4m"


def test_spark_submit_owns_master_and_classpath():
    config = load_config(environ={})
    settings = spark_settings(config, {"PYSPARK_GATEWAY_PORT": "1234"})
    assert "spark.master" not in settings
    assert "spark.driver.extraClassPath" not in settings
