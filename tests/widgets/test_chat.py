"""ChatPlayground against a real server: streamed replies, sampling controls, stop, reset, dead server."""

from __future__ import annotations

import requests

from sglkit.widgets import ChatPlayground
from tests.widgets.conftest import closed_port_url


def chat_reference(base_url: str, messages: list[dict], max_tokens: int) -> str:
    """The same chat, not streamed, greedy."""
    response = requests.post(
        f"{base_url}/v1/chat/completions",
        timeout=60,
        json={"model": "default", "messages": messages, "temperature": 0, "max_tokens": max_tokens},
    )
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_send_button_streams_a_reply(widget_server):
    chat = ChatPlayground(widget_server.base_url, temperature=0.0, max_tokens=12)
    seen: list[str] = []
    chat.transcript.observe(lambda change: seen.append(change["new"]), names="value")
    chat.prompt.value = "Hello, who are you?"
    chat.send_button.click()
    assert chat.wait(timeout=120)
    assert chat.last_result.ok, chat.last_result.message
    reply = chat.messages[-1]["content"]
    assert chat.messages[0] == {"role": "user", "content": "Hello, who are you?"}
    assert reply == chat_reference(widget_server.base_url, chat.messages[:1], 12)
    partial = [value for value in seen if "&#9646;" in value]  # redraws while the reply was still streaming
    assert len(partial) >= 2 and len(set(partial)) == len(partial)
    assert chat.last_result.details["num_chunks"] >= 2
    assert chat.prompt.value == "" and not chat.send_button.disabled and chat.stop_button.disabled

    chat.system.value = "You are terse."
    second = chat.send("And then?")
    assert chat.messages[-1] == {"role": "assistant", "content": second}
    assert chat.request_messages()[0] == {"role": "system", "content": "You are terse."}
    assert second == chat_reference(widget_server.base_url, chat.request_messages()[:-1], 12)

    chat.reset_button.click()
    assert chat.messages == [] and "No messages yet." in chat.transcript.value


def test_max_tokens_and_stop(widget_server):
    chat = ChatPlayground(widget_server.base_url, temperature=0.0, max_tokens=1)
    one = chat.send("Count to ten")
    assert one == chat_reference(widget_server.base_url, [{"role": "user", "content": "Count to ten"}], 1)

    chat.reset()
    chat.max_tokens.value, chat.temperature.value, chat.top_p.value = 400, 1.0, 0.9
    chat.transcript.observe(lambda change: chat.stop() if "&#9646;" in change["new"] else None, names="value")
    chat.send("Tell me a story")
    assert chat.last_result.details["num_chunks"] == 1  # stopped right after the first token
    assert "(stopped)" in chat.status.value


def test_dead_server_keeps_the_message_for_a_retry():
    chat = ChatPlayground(closed_port_url())
    assert chat.send("Hello?") == ""
    assert not chat.last_result.ok
    assert "Request failed: cannot reach" in chat.status.value
    assert chat.messages == [] and chat.prompt.value == "Hello?"
