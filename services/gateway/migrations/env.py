from services.gateway.db import Base
from services.platform.migrations import run_env

run_env(Base.metadata)
