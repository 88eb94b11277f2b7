from services.platform.migrations import run_env
from services.risk.db import Base

run_env(Base.metadata)
