"""A chat box over the OpenAI route (prompt -> ServerClient.stream_chat -> /v1/chat/completions -> transcript).

Tokens stream into the transcript as they arrive. Temperature, top_p and max_tokens come from sliders; Reset
forgets the conversation; Stop ends a reply early. ``send(text)`` is the synchronous form (returns the reply);
the Send button runs it on a background thread so the kernel stays free.
"""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets

from sglkit.widgets.client import RequestFailed, ServerClient
from sglkit.widgets.controls import ActionResult, status_html
from sglkit.widgets.tasks import BackgroundTask

__all__ = ["ChatPlayground"]

_ROLE_STYLE = {
    "user": ("You", "#e8f0fe"),
    "assistant": ("Assistant", "#f1f3f4"),
    "system": ("System", "#fff8e1"),
}


def transcript_html(messages: list[dict[str, str]], pending: str | None = None) -> str:
    """The conversation as HTML bubbles; ``pending`` is the assistant reply still streaming."""
    turns = list(messages) + ([{"role": "assistant", "content": pending}] if pending is not None else [])
    if not turns:
        return "<div class='sglkit-chat-empty' style='color:#777;font-size:13px'>No messages yet.</div>"
    parts = []
    for i, message in enumerate(turns):
        who, color = _ROLE_STYLE.get(message["role"], (message["role"], "#fff"))
        streaming = pending is not None and i == len(turns) - 1
        cursor = " &#9646;" if streaming else ""
        parts.append(
            f"<div class='sglkit-chat-{message['role']}' style='background:{color};border-radius:6px;"
            f"padding:4px 8px;margin:3px 0;white-space:pre-wrap;font-size:13px'><b>{who}:</b> "
            f"{html.escape(message['content'])}{cursor}</div>"
        )
    return "".join(parts)


class ChatPlayground(widgets.VBox):
    """A chat box on ``base_url``'s ``/v1/chat/completions`` with streaming, sampling controls and a reset."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        client: ServerClient | None = None,
        timeout: float = 5.0,
        system_prompt: str = "",
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 64,
        read_timeout: float = 120.0,
    ) -> None:
        if client is None:
            if base_url is None:
                raise ValueError("Give base_url (e.g. 'http://127.0.0.1:30000') or client.")
            client = ServerClient(base_url, api_key, timeout)
        self.client = client
        self.read_timeout = read_timeout
        self.messages: list[dict[str, str]] = []
        self.last_result: ActionResult | None = None
        self.task = BackgroundTask("sglkit-chat")
        self._stop = threading.Event()

        self.transcript = widgets.HTML(
            transcript_html([]),
            layout=widgets.Layout(
                max_height="320px", overflow="auto", border="1px solid #ddd", padding="4px"
            ),
        )
        self.transcript.add_class("sglkit-chat-transcript")
        self.system = widgets.Text(
            value=system_prompt,
            placeholder="optional system prompt",
            description="System",
            layout=widgets.Layout(width="100%"),
        )
        self.prompt = widgets.Textarea(
            placeholder="Type a message and press Send", rows=2, layout=widgets.Layout(width="100%")
        )
        self.temperature = widgets.FloatSlider(
            value=temperature, min=0.0, max=2.0, step=0.05, description="temperature", readout_format=".2f"
        )
        self.top_p = widgets.FloatSlider(
            value=top_p, min=0.0, max=1.0, step=0.01, description="top_p", readout_format=".2f"
        )
        self.max_tokens = widgets.IntSlider(value=max_tokens, min=1, max=2048, description="max_tokens")
        self.send_button = widgets.Button(description="Send", icon="paper-plane", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.reset_button = widgets.Button(description="Reset", icon="eraser")
        self.status = widgets.HTML()
        self.status.add_class("sglkit-chat-status")
        self.send_button.on_click(lambda _: self.task.start(self.send))
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        super().__init__(
            [
                widgets.HTML("<b>Chat</b> <span style='color:#777'>/v1/chat/completions, streamed</span>"),
                self.transcript,
                self.system,
                self.prompt,
                widgets.HBox([self.send_button, self.stop_button, self.reset_button]),
                widgets.HBox([self.temperature, self.top_p, self.max_tokens]),
                self.status,
            ]
        )
        self.add_class("sglkit-chat")

    def request_messages(self) -> list[dict[str, str]]:
        """The messages sent with the next request: the system prompt (if any), then the conversation."""
        system = self.system.value.strip()
        return ([{"role": "system", "content": system}] if system else []) + list(self.messages)

    def send(self, text: str | None = None) -> str:
        """Send ``text`` (default: the prompt box) and stream the reply into the transcript; returns the reply.

        On failure the message stays out of the conversation (so it can be sent again), the status line says
        why, and the (possibly partial) reply so far is returned.
        """
        text = self.prompt.value if text is None else text
        if not text.strip():
            self.status.value = status_html("Type a message first.", "#d62728", "sglkit-chat-status")
            return ""
        self._stop.clear()
        self.prompt.value = ""
        self.messages.append({"role": "user", "content": text})
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.status.value = status_html("Generating...", "#555", "sglkit-chat-status")
        reply, error, num_chunks = "", None, 0
        try:
            for delta in self.client.stream_chat(
                self.request_messages(),
                temperature=self.temperature.value,
                top_p=self.top_p.value,
                max_tokens=self.max_tokens.value,
                stop=self._stop,
                read_timeout=self.read_timeout,
            ):
                reply += delta
                num_chunks += 1
                self.transcript.value = transcript_html(self.messages, reply)
        except RequestFailed as exc:
            error = str(exc)
        finally:
            self.send_button.disabled, self.stop_button.disabled = False, True
        if error is not None and not reply:
            self.messages.pop()
            self.prompt.value = text
            message = f"Request failed: {error}"
        else:
            self.messages.append({"role": "assistant", "content": reply})
            stopped = " (stopped)" if self._stop.is_set() else ""
            message = f"Reply streamed in {num_chunks} chunks{stopped}." + (
                f" Then: {error}" if error else ""
            )
        self.transcript.value = transcript_html(self.messages)
        ok = error is None
        self.status.value = status_html(message, "#555" if ok else "#d62728", "sglkit-chat-status")
        self.last_result = ActionResult(ok, message, None, {"reply": reply, "num_chunks": num_chunks})
        return reply

    def stop(self) -> None:
        """End the reply being streamed (the connection closes; the server aborts the request)."""
        self._stop.set()

    def reset(self) -> None:
        """Forget the conversation (stops a reply in progress first)."""
        self.stop()
        self.task.wait(self.read_timeout)
        self.messages.clear()
        self.transcript.value = transcript_html([])
        self.status.value = ""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the reply the Send button started; True once none is running."""
        return self.task.wait(timeout)

    def __repr__(self) -> str:
        return f"ChatPlayground({self.client.base_url}, {len(self.messages)} messages)"
