"""The one Spark session factory: master, Spark conf, the S3A connector and its credentials.

Credentials and endpoints come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, TAILOR_S3_KMS_KEY_ID), never from a conf file. Spark
redacts the `*.secret.key` / `*.access.key` settings in its UI and logs.
"""
from __future__ import annotations

import os
from pathlib import Path

from jobs.config import REPO_ROOT, ConfigError, TailorConfig, checkout_path

LOG4J_CONFIG = REPO_ROOT / "conf" / "log4j2.properties"


def launched_by_spark_submit(environ: dict[str, str]) -> bool:
    """spark-submit starts the JVM first and hands its gateway to Python through the env."""
    return "PYSPARK_GATEWAY_PORT" in environ


def s3a_settings(config: TailorConfig, environ: dict[str, str]) -> dict[str, str]:
    """Hadoop S3A settings (as `spark.hadoop.*`) from config plus credentials from the env."""
    s3 = config.storage.s3
    prefix = "spark.hadoop.fs.s3a."
    settings = {
        prefix + "impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        prefix + "path.style.access": str(s3.path_style_access).lower(),
        prefix + "connection.ssl.enabled": str(s3.ssl_enabled).lower(),
        prefix + "endpoint.region": s3.region,
    }
    if s3.endpoint:
        settings[prefix + "endpoint"] = s3.endpoint
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        settings[prefix + "access.key"] = environ["AWS_ACCESS_KEY_ID"]
        settings[prefix + "secret.key"] = environ["AWS_SECRET_ACCESS_KEY"]
        if environ.get("AWS_SESSION_TOKEN"):
            settings[prefix + "session.token"] = environ["AWS_SESSION_TOKEN"]
            settings[prefix + "aws.credentials.provider"] = (
                "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider")
    if s3.encryption_algorithm:
        settings[prefix + "encryption.algorithm"] = s3.encryption_algorithm
        if s3.encryption_algorithm == "SSE-KMS":
            key_id = environ.get("TAILOR_S3_KMS_KEY_ID")
            if not key_id:
                raise ConfigError("storage.s3.encryption_algorithm: SSE-KMS needs "
                                  "TAILOR_S3_KMS_KEY_ID in the environment")
            settings[prefix + "encryption.key"] = key_id
    return settings


def spark_settings(config: TailorConfig, environ: dict[str, str]) -> dict[str, str]:
    """Every Spark setting a job's session gets, as a plain dict (testable without Spark).

    Under spark-submit the submitter owns the master and the classpath, so they are left out.
    """
    settings = {"spark.app.name": config.spark.app_name, **config.spark.conf}
    settings.update(s3a_settings(config, environ))
    if launched_by_spark_submit(environ):
        return settings
    settings["spark.master"] = config.spark.master
    # Tailor's log4j settings first: JVM options configured under spark.conf follow (the later
    # of two -D settings wins), rather than being replaced.
    settings["spark.driver.extraJavaOptions"] = " ".join(filter(None, [
        f"-Dlog4j.configurationFile=file:{LOG4J_CONFIG}",
        settings.get("spark.driver.extraJavaOptions")]))
    jars_dir = config.spark.s3a_jars_dir
    if jars_dir:
        jars_path = checkout_path(jars_dir)
        if jars_path.is_dir():
            settings["spark.driver.extraClassPath"] = f"{jars_path}/*"
            settings["spark.executor.extraClassPath"] = f"{jars_path}/*"
    return settings


def build_spark_session(config: TailorConfig, environ: dict[str, str] | None = None):
    """Create (or join, under spark-submit) the session a job runs in."""
    from pyspark.sql import SparkSession

    environ = dict(os.environ if environ is None else environ)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in spark_settings(config, environ).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
