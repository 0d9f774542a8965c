from pathlib import Path

from typer.testing import CliRunner

from farm.cli.app import app

runner = CliRunner()


def test_validate_sample_prints_summary(sample_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(sample_path)])
    assert result.exit_code == 0, result.output
    assert "10 shots" in result.output
    assert "53 steps" in result.output
