"""E-mail: a ``Mailer`` over Airflow's SMTP provider, and a loopback SMTP sink for demo and tests.

The sink is a real SMTP server (aiosmtpd) bound to 127.0.0.1 that stores every message it
receives in a Maildir folder (``var/demo/mail/`` in the demo), so what a data owner would get is
on disk to open.
"""

from __future__ import annotations

import mailbox
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path

from chainlend import settings


@dataclass(frozen=True)
class Mailer:
    """Sends mail through an Airflow SMTP connection (``smtp_default``)."""

    conn_id: str = settings.SMTP_CONN_ID

    def send(self, to: list[str], subject: str, html: str) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=self.conn_id) as hook:
            hook.send_email_smtp(to=to, subject=subject, html_content=html)


class SmtpSink:
    """A real SMTP server on 127.0.0.1 that stores every message in a Maildir folder."""

    def __init__(self, maildir: Path, port: int = 0, host: str = "127.0.0.1"):
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Mailbox

        self.maildir = Path(maildir)
        for sub in ("tmp", "new", "cur"):  # Maildir(create=True) skips them if the folder exists
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        if port == 0:
            port = _free_port(host)
        self.host, self.port = host, port
        self._controller = Controller(Mailbox(str(self.maildir)), hostname=host, port=port)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()

    def messages(self) -> list[Message]:
        """Every message received so far, oldest first."""
        return read_maildir(self.maildir)

    def connection_json(self) -> str:
        """An ``AIRFLOW_CONN_SMTP_DEFAULT`` value that points at this sink."""
        import json

        return json.dumps({"conn_type": "smtp", "host": self.host, "port": self.port,
                           "extra": {"disable_ssl": True, "disable_tls": True,
                                     "from_email": "chainlend@localhost"}})


def read_maildir(folder: Path) -> list[Message]:
    box = mailbox.Maildir(str(folder), create=False)
    msgs = []
    for key in box.keys():
        with box.get_file(key) as fh:
            raw = fh.read()
        msgs.append(message_from_bytes(raw, policy=default_policy))
    return sorted(msgs, key=lambda m: m.get("X-Peer", "") + (m.get("Date") or ""))


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
