from services.platform.migrations import run_env
from services.profile.db import Base

run_env(Base.metadata)
