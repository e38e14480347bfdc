import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a model hub
os.environ.pop("NEGALORA_HOME", None)
os.environ.pop("NEGALORA_MODEL", None)
os.environ.pop("NEGALORA_DEVICE", None)

import json  # noqa: E402

import pytest  # noqa: E402

from negalora.cli import main  # noqa: E402
from negalora.home import Home  # noqa: E402


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    from negalora.device import choose_placement
    from negalora.models.loader import load_model

    home = Home(tmp_path_factory.mktemp("shared-home"))
    return load_model("demo", home, choose_placement("cpu"))


@pytest.fixture(scope="session")
def generator(demo_model):
    from negalora.generate import Generator

    return Generator(demo_model)


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: cli("generate", "a cat", "--home", dir) -> CliResult."""

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def files_under(path) -> list:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
