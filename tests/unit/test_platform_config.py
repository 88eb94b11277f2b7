import pytest

from services.platform.config import ConfigError, ServiceSettings


def test_defaults_are_local_and_per_service():
    s = ServiceSettings.from_env("campaign", dependencies=("profile", "risk"), env={})
    assert s.grpc_port == 50052
    assert s.listen_host == "127.0.0.1"
    assert s.database_url == "sqlite+aiosqlite:///var/data/campaign.db"
    assert s.dependencies == {"profile": "127.0.0.1:50051", "risk": "127.0.0.1:50053"}
    assert s.auto_migrate is True


def test_environment_overrides():
    env = {"GRPC_PORT": "6000", "PROFILE_SERVICE_ADDR": "profile:50051", "AUTO_MIGRATE": "false",
           "DATABASE_URL": "postgresql+psycopg://u@db/x", "DRAIN_SECONDS": "0.5", "LOG_LEVEL": "debug"}
    s = ServiceSettings.from_env("campaign", dependencies=("profile",), env=env)
    assert (s.grpc_port, s.dependencies["profile"], s.auto_migrate) == (6000, "profile:50051", False)
    assert s.database_url.startswith("postgresql+psycopg://")
    assert (s.drain_seconds, s.log_level) == (0.5, "DEBUG")


@pytest.mark.parametrize(("env", "names"), [
    ({"GRPC_PORT": "eighty"}, "GRPC_PORT"),
    ({"GRPC_PORT": "70000"}, "GRPC_PORT"),
    ({"AUTO_MIGRATE": "maybe"}, "AUTO_MIGRATE"),
    ({"DRAIN_SECONDS": "-1"}, "DRAIN_SECONDS"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
])
def test_malformed_values_fail_fast_naming_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        ServiceSettings.from_env("profile", env=env)
