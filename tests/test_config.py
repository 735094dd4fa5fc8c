"""Settings from environment variables, with safe defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

import config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults():
    settings = config.from_env({})
    assert settings["HOST"] == "127.0.0.1" and settings["PORT"] == 5000  # the network is opt-in
    assert settings["MONGO_URI"] is None and settings["MONGO_DB"] == "Refinity"
    assert settings["DATA_DIR"] == str(ROOT / "var")
    assert settings["MAX_CONTENT_LENGTH"] == 32 * 1024 * 1024
    assert settings["CORS_ORIGINS"] == ["*"] and settings["API_TOKEN"] is None
    assert settings["SD_ENDPOINTS"] == []
    assert settings["AZURE_OPENAI_VISION_DEPLOYMENT"] == settings["AZURE_OPENAI_DEPLOYMENT"]
    # One largest save (512 MB, twice that while parsed) fits the body budget; slow clients get 10 s.
    assert settings["BODY_MEMORY_BUDGET"] == 1536 * 1024 * 1024 >= 2 * settings["SAVE_MAX_CONTENT_LENGTH"]
    assert (settings["REQUEST_READ_TIMEOUT"], settings["REQUEST_MIN_RATE"]) == (10.0, 32 * 1024)
    assert settings["WEB_CONCURRENCY"] == 1 and settings["REDIS_URL"] is None  # one process keeps it all


def test_values_from_environment():
    settings = config.from_env({
        "PORT": "8080", "SD_ENDPOINTS": "http://a:7860, http://b:7860,",
        "CORS_ORIGINS": "http://x.example", "AZURE_OPENAI_DEPLOYMENT": "chat",
        "AZURE_OPENAI_VISION_DEPLOYMENT": "eyes", "MAX_CONTENT_LENGTH": "1000",
    })
    assert settings["PORT"] == 8080 and settings["MAX_CONTENT_LENGTH"] == 1000
    assert settings["SD_ENDPOINTS"] == ["http://a:7860", "http://b:7860"]
    assert settings["CORS_ORIGINS"] == ["http://x.example"]
    assert (settings["AZURE_OPENAI_DEPLOYMENT"], settings["AZURE_OPENAI_VISION_DEPLOYMENT"]) == ("chat", "eyes")


def test_vision_deployment_defaults_to_chat_deployment():
    assert config.from_env({"AZURE_OPENAI_DEPLOYMENT": "chat"})["AZURE_OPENAI_VISION_DEPLOYMENT"] == "chat"


def test_bad_number_names_the_variable():
    with pytest.raises(ValueError, match="PORT"):
        config.from_env({"PORT": "eighty"})



@pytest.mark.parametrize("given, expected", [(None, ROOT / "var"), ("data/study", ROOT / "data" / "study"),
                                             ("/srv/refinity", Path("/srv/refinity"))])
def test_a_relative_data_dir_is_under_the_project_wherever_the_server_starts(tmp_path, monkeypatch,
                                                                             given, expected):
    monkeypatch.chdir(tmp_path)  # started from elsewhere, it must not open an empty store there
    env = {} if given is None else {"DATA_DIR": given}
    assert config.from_env(env)["DATA_DIR"] == str(expected)


def test_allowed_clients_are_networks_and_a_bad_one_stops_startup():
    networks = config.from_env({"ALLOWED_CLIENTS": "10.0.0.0/8, 192.168.1.7/24,fd00::/8, 203.0.113.5"})
    assert [str(n) for n in networks["ALLOWED_CLIENTS"]] == ["10.0.0.0/8", "192.168.1.0/24", "fd00::/8",
                                                               "203.0.113.5/32"]
    assert config.from_env({})["ALLOWED_CLIENTS"] == ()  # any client
    with pytest.raises(ValueError, match="ALLOWED_CLIENTS"):
        config.from_env({"ALLOWED_CLIENTS": "10.0.0.300/8"})


@pytest.mark.parametrize("raw, expected", [("", False), ("1", True), ("yes", True), ("off", False)])
def test_participant_register_is_off_unless_switched_on(raw, expected):
    assert config.from_env({"PARTICIPANT_REGISTER": raw})["PARTICIPANT_REGISTER"] is expected


def test_a_word_that_is_no_switch_names_the_variable():
    with pytest.raises(ValueError, match="PARTICIPANT_REGISTER"):
        config.from_env({"PARTICIPANT_REGISTER": "maybe"})


def test_gpt_protocol_and_budget():
    settings = config.from_env({})
    assert (settings["GPT_STRUCTURED"], settings["GPT_MAX_TOKENS"]) == ("auto", 2000)
    assert config.from_env({"GPT_STRUCTURED": " Off "})["GPT_STRUCTURED"] == "off"
    with pytest.raises(ValueError, match="GPT_STRUCTURED must be one of auto, on, off, got 'yes'"):
        config.from_env({"GPT_STRUCTURED": "yes"})
