"""Developer and user entry points: `nox -s demo` (the main job) and `nox -s tests` (the suite).

Each session makes its own virtual environment. torch==2.13.0 (CPU build) is installed first and
on its own, so no resolver ever pulls a CUDA build of several GB.
"""
import os
import tempfile

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"
PACKAGES = ["core", "kernels", "parallel", "models", "data", "rl", "cli"]
# The tests also exercise xt-rl's optional extras (math-verify, reasoning-gym: neither needs torch).
TEST_DEPS = ["pytest>=8", "pytest-timeout", "hypothesis>=6.100", "transformers>=5.17", "gguf>=0.10",
             "triton>=3.6", "math-verify>=0.9", "reasoning-gym>=0.1.25", "tensorboard>=2.14",
             "ray>=2.40"]  # ray: the xt rl orchestration tests (installed in ~6 s here, 240 MB on disk)


def _install_xt(session: nox.Session, *extra: str) -> None:
    session.install(TORCH)
    args = []
    for p in PACKAGES:
        args += ["-e", f"packages/xt-{p}"]
    session.install(*args, *extra)


def _env() -> dict:
    tmp = os.path.join(tempfile.gettempdir(), "xt-caches")
    return {
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(tmp, "inductor"),
        "TORCHELASTIC_ERROR_FILE": os.path.join(tmp, "torchelastic.json"),
        "RAY_TMPDIR": os.path.join(tmp, "ray"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }


@nox.session
def demo(session: nox.Session) -> None:
    """Train the Qwen3-MoE demo on Shakespeare with the Qwen3 tokenizer (CPU, ~10 min).

    `--resume auto`: a second invocation continues (or just re-reports) the same run.
    Other configs: `nox -s demo -- examples/OTHER.toml [--set k=v ...]`.
    """
    _install_xt(session)
    config = session.posargs[0] if session.posargs else "examples/qwen3_moe_shakespeare.toml"
    session.run("xt", "train", config, "--resume", "auto", *session.posargs[1:], env=_env())


@nox.session
def rl_demo(session: nox.Session) -> None:
    """GRPO on SmolLM2-135M-Instruct for one-digit arithmetic (CPU; README, "RL on the CPU").

    Converts the pinned GGUF asset to an HF folder once (`runs/smollm2-135m-instruct`), then runs
    `xt rl examples/rl_smollm2_arithmetic.toml --resume auto` (extra args are passed on).
    """
    _install_xt(session, "reasoning-gym>=0.1.25", "gguf>=0.10")
    if not os.path.isdir("runs/smollm2-135m-instruct"):
        session.run("xt", "convert", "asset:smollm2-135m-instruct-gguf", "runs/smollm2-135m-instruct", env=_env())
    session.run("xt", "rl", "examples/rl_smollm2_arithmetic.toml", "--resume", "auto", *session.posargs, env=_env())


@nox.session
def tests(session: nox.Session) -> None:
    """Install everything and run the whole suite (CI runs exactly this)."""
    _install_xt(session, *TEST_DEPS)
    session.run("pytest", "-q", "-rs", *session.posargs, env=_env())
