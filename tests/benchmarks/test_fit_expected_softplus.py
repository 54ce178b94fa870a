"""benchmarks/fit_expected_softplus.py and the table it writes (mp_hub/esp_coefficients.json): the fit at the
committed settings reproduces the committed table, and --write's file reads back to the same coefficients."""

import json

import fit_expected_softplus as fit
import numpy as np
import pytest

from mp_hub import functional
from mp_hub.errors import ConfigError
from mp_hub.esp_coefficients import ESP_COEFFICIENTS, TABLE_FILE, load_table


@pytest.mark.parametrize("segment", [0, 13, 31])  # the steep start, the middle, the tail before the cut
def test_the_fit_reproduces_the_committed_table(segment):
    # the table's own error against q is 1.5e-10: a refit agreeing to 1e-10 is the same table, up to rounding
    np.testing.assert_allclose(fit.fit_segment(segment), functional.ESP_TABLE[segment], rtol=0, atol=1e-10)


def test_the_committed_file_is_what_write_writes_for_the_committed_table():
    assert fit.table_text(np.array(functional.ESP_TABLE)) == TABLE_FILE.read_text(encoding="utf-8")
    table = load_table()
    settings = (table["scale"], table["limit"], table["degree"], len(table["coefficients"]))
    assert settings == (functional.ESP_SCALE, functional.ESP_LIMIT, functional.ESP_DEGREE, len(functional.ESP_TABLE))


def test_a_written_table_reads_back_to_the_same_doubles(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((32, fit.DEGREE + 1)) * 10.0 ** rng.integers(-12, 1, (32, 1))
    path = fit.write_text_atomic(tmp_path / "esp.json", fit.table_text(table))
    assert np.array_equal(np.array(load_table(path)["coefficients"]), table)
    rows = np.array(load_table()["coefficients"])
    assert tuple(rows.ravel()) == ESP_COEFFICIENTS  # the flat tuple the package uses, segment after segment


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t["coefficients"][3].pop(), "segment 3 has"),
        (lambda t: t["coefficients"][5].__setitem__(0, "NaN"), "segment 5 holds a value that is not a finite float"),
        (lambda t: t.pop("degree"), "not a table of E\\[softplus\\] coefficients"),
    ],
)
def test_a_broken_table_file_is_refused_naming_it(tmp_path, change, message):
    table = json.loads(TABLE_FILE.read_text())
    change(table)
    path = tmp_path / "esp.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=message) as err:
        load_table(path)
    assert str(path) in str(err.value)


@pytest.mark.slow
def test_the_script_checks_the_committed_table_and_writes_its_record(run_script):
    report, path = run_script("fit_expected_softplus.py", "--check-only")
    assert path.name == "fit_expected_softplus.json"
    assert 0 < report["max_abs_error"] < 1e-9 and report["segments"] == len(functional.ESP_TABLE)
