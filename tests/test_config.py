"""Settings from environment variables, with safe defaults."""
from __future__ import annotations

import pytest

import config


def test_defaults():
    settings = config.from_env({})
    assert settings["HOST"] == "0.0.0.0" and settings["PORT"] == 5000
    assert settings["MONGO_URI"] is None and settings["MONGO_DB"] == "Refinity"
    assert settings["DATA_DIR"] == "./var"
    assert settings["MAX_CONTENT_LENGTH"] == 32 * 1024 * 1024
    assert settings["CORS_ORIGINS"] == ["*"] and settings["API_TOKEN"] is None
    assert settings["SD_ENDPOINTS"] == []
    assert settings["AZURE_OPENAI_VISION_DEPLOYMENT"] == settings["AZURE_OPENAI_DEPLOYMENT"]
    # One largest save (512 MB, twice that while parsed) fits the body budget; slow clients get 10 s.
    assert settings["BODY_MEMORY_BUDGET"] == 1536 * 1024 * 1024 >= 2 * settings["SAVE_MAX_CONTENT_LENGTH"]
    assert (settings["REQUEST_READ_TIMEOUT"], settings["REQUEST_MIN_RATE"]) == (10.0, 32 * 1024)


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

