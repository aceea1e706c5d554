"""The sequence readers on tiny files written in the exact real formats (.ts, the CSVs)."""

from __future__ import annotations

import numpy as np
import pytest

from nnlab.data.sequences import (
    fill_missing,
    locate_series,
    locate_ts,
    read_series_csv,
    read_ts,
)
from nnlab.errors import DataError

# the head of JapaneseVowels_TRAIN.ts (aeon 1.6.0), cut to 3 channels and 3 short cases
VARIABLE = """#A UCI Archive dataset.
#
@problemName Tiny
@timeStamps false
@missing false
@univariate false
@dimensions 3
@equalLength false
@classLabel true 1 2 3
@data
1.86,1.89,1.93:-0.20,-0.19,-0.23:0.26,0.23,0.25:1
1.30,1.28:0.06,0.01:0.1,0.2:2
0.5,0.6,0.7,0.8:1,2,3,4:5,6,7,8:3
"""
# GunPoint-style univariate equal length, '%' comments as in aeon's UnitTest files
EQUAL = """% a comment
@problemName Uni
@timeStamps false
@missing true
@univariate true
@equalLength true
@seriesLength 4
@classLabel true Standing Running
@data
0.1,0.2,?,0.4:Running
1,2,3,4:Standing
"""
STAMPED = """@problemName Stamps
@timeStamps true
@univariate true
@equalLength true
@seriesLength 2
@classLabel true a b
@data
(2007-01-01 00:00:00,241.97),(2007-01-01 00:01:00,241.75):b
"""


def _write(tmp_path, text, name="x_TRAIN.ts"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_ts_variable_length_multivariate(tmp_path):
    data = read_ts(_write(tmp_path, VARIABLE))
    assert data.name == "Tiny" and data.classes == ["1", "2", "3"] and data.channels == 3
    assert data.lengths.tolist() == [3, 2, 4] and not data.equal_length
    assert data.labels.tolist() == [0, 1, 2]
    np.testing.assert_allclose(data.series[0][:, 1], [-0.20, -0.19, -0.23], rtol=1e-6)
    np.testing.assert_allclose(data.series[2][3], [0.8, 4, 8], rtol=1e-6)
    assert data.series[0].dtype == np.float32


def test_ts_univariate_missing_names_and_timestamps(tmp_path):
    data = read_ts(_write(tmp_path, EQUAL))
    assert data.classes == ["Standing", "Running"] and data.labels.tolist() == [1, 0]
    assert data.missing == 1 and np.isnan(data.series[0][2, 0]) and data.channels == 1
    filled, n = fill_missing(data.series[0])
    assert n == 1 and filled[2, 0] == pytest.approx(0.3)
    stamped = read_ts(_write(tmp_path, STAMPED))  # ':' inside the timestamps is not a channel
    np.testing.assert_allclose(stamped.series[0][:, 0], [241.97, 241.75], rtol=1e-6)


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda s: s.replace("0.5,0.6,0.7,0.8:1,2,3,4", "0.5,0.6,0.7:1,2,3,4"),
            "different lengths",
        ),
        (lambda s: s.replace(":0.1,0.2:2", ":2"), "@dimensions 3"),
        (lambda s: s.replace(":0.1,0.2:2", ":0.1,0.2:7"), "not one of the header"),
        (lambda s: s.replace("1.30,1.28", "1.30,abc"), "not a number"),
        (lambda s: s.replace("@data\n", ""), "no '@data'"),
        (lambda s: s.replace("@classLabel true 1 2 3", "@targetLabel true"), "classLabel"),
        (lambda s: s.replace("@equalLength false", "@equalLength maybe"), "true or false"),
    ],
)
def test_ragged_or_malformed_ts_is_one_data_error(tmp_path, edit, match):
    with pytest.raises(DataError, match=match) as err:
        read_ts(_write(tmp_path, edit(VARIABLE)))
    assert "x_TRAIN.ts" in str(err.value)


def test_equal_length_header_is_checked(tmp_path):
    with pytest.raises(DataError, match="@seriesLength 4"):
        read_ts(_write(tmp_path, EQUAL.replace("1,2,3,4:", "1,2,3:")))


def test_fill_missing_interpolates_and_drops_trailing_gaps():
    x = np.array([[np.nan, 1], [2, np.nan], [4, 5], [np.nan, np.nan]], np.float32)
    filled, n = fill_missing(x)
    assert filled.shape == (3, 2) and n == 2  # the all-missing last step is dropped
    np.testing.assert_allclose(filled, [[2, 1], [2, 3], [4, 5]])
    with pytest.raises(DataError, match="no values"):
        fill_missing(np.full((3, 1), np.nan))


def test_series_csvs_in_their_real_formats(tmp_path):
    (tmp_path / "Airline.csv").write_text("Date,Passengers\n1949-01,112\n1949-02,118\n")
    (tmp_path / "sunspots.csv").write_text('"YEAR","SUNACTIVITY"\n1700,5\n1701,11\n')
    (tmp_path / "co2.csv").write_text("date,co2\n19580329,316.1\n19580405,\n19580412,317.6\n")
    times, v = read_series_csv(tmp_path / "Airline.csv", "Passengers")
    assert times == ["1949-01", "1949-02"] and v.tolist() == [112, 118]
    assert read_series_csv(tmp_path / "sunspots.csv", "SUNACTIVITY")[1].tolist() == [5, 11]
    _, co2 = read_series_csv(tmp_path / "co2.csv", "co2")
    assert np.isnan(co2[1]) and fill_missing(co2)[0][1] == pytest.approx(316.85)
    with pytest.raises(DataError, match="no column 'co3'"):
        read_series_csv(tmp_path / "co2.csv", "co3")
    (tmp_path / "bad.csv").write_text("date,co2\n19580329,316.1,9\n")
    with pytest.raises(DataError, match="line 2"):
        read_series_csv(tmp_path / "bad.csv")


def test_locate_tries_data_dir_then_make_datas_copy(tmp_path):
    packaged = tmp_path / "share"
    (packaged / "aeon-1.6.0" / "Tiny").mkdir(parents=True)
    for split in ("TRAIN", "TEST"):
        (packaged / "aeon-1.6.0" / "Tiny" / f"Tiny_{split}.ts").write_text(VARIABLE)
    files = locate_ts("Tiny", tmp_path / "nowhere", packaged=packaged)
    assert files["test"].name == "Tiny_TEST.ts"
    mine = tmp_path / "mine"
    mine.mkdir()
    for split in ("TRAIN", "TEST"):
        (mine / f"Tiny_{split}.ts").write_text(VARIABLE)
    assert locate_ts("Tiny", mine, packaged=packaged)["train"].parent == mine
    with pytest.raises(DataError) as err:
        locate_ts("Nope", tmp_path / "nowhere", packaged=packaged)
    text = str(err.value)
    assert "dataset.data_dir" in text and "make data" in text and "aeon==1.6.0" in text
    (packaged / "statsmodels-0.15.0" / "sunspots").mkdir(parents=True)
    (packaged / "statsmodels-0.15.0" / "sunspots" / "sunspots.csv").write_text("a,b\n1,2\n")
    assert locate_series("sunspots", tmp_path / "nowhere", packaged=packaged).is_file()
    with pytest.raises(DataError, match="statsmodels==0.15.0"):
        locate_series("co2", tmp_path / "nowhere", packaged=packaged)
