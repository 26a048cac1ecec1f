// The receiving side of the page: answers signed WebRTC offers that arrive through the server,
// runs the transfer protocol on the channel, and shows each handoff (ask first, like the
// daemons' `ask` policy; then progress, the session's messages and documents, and Resume).
import { fromB64url } from "./bytes.js";
import * as device from "./device.js";
import { anchor, parseCrl } from "./pki.js";
import { ReplayCache } from "./envelope.js";
import * as rtc from "./rtc.js";
import { itemBlob, serveLink } from "./transfer.js";

const el = (tag, props = {}, ...kids) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...kids);
  return e;
};

function human(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

export class Receiver {
  constructor(dev, socket, names) {
    this.dev = dev;
    this.socket = socket;
    this.names = names;  // device id -> name
    this.replay = new ReplayCache();
    this.trustAnchor = null;
    this.cards = new Map();
    this.requests = new rtc.Requests(socket);
  }

  async refreshTrust() {
    let crl = null;
    try {
      const resp = await fetch(`/v1/crl?account=${this.dev.accountId}&format=der`, { cache: "no-store" });
      if (resp.ok) crl = new Uint8Array(await resp.arrayBuffer());
    } catch { /* offline: keep the last one */ }
    const next = await anchor(this.dev.accountCa, crl ?? this.trustAnchor?.crl?.der ?? null);
    if (!this.trustAnchor || !this.trustAnchor.crl || (next.crl && next.crl.number >= this.trustAnchor.crl.number)) {
      this.trustAnchor = next;
    }
  }

  async iceServers() {
    try {
      const got = await device.request(this.dev, "GET", "/v1/ice");
      return got.ice_servers.map((s) => ({ urls: s.urls, username: s.username ?? undefined, credential: s.credential ?? undefined }));
    } catch {
      return [];
    }
  }

  async onSignal(from, data) {
    let frame;
    try { frame = rtc.decodeSignal(data); } catch { return; }
    if (frame.kind !== rtc.KIND_OFFER) {
      this.requests.answered(from, frame);
      return;
    }
    try {
      if (!this.trustAnchor) await this.refreshTrust();
      const { answer, ready } = await rtc.answer(this.dev, this.trustAnchor, this.replay, frame.body, await this.iceServers());
      this.socket.send({ type: "signal", to: from, data: rtc.encodeSignal(frame.ref, rtc.KIND_ANSWER, answer) });
      const channel = await ready;
      document.body.dataset.link = "up";
      serveLink(channel, this.context(), this.ui()).finally(() => { document.body.dataset.link = "down"; });
    } catch (err) {
      const code = err.code || "internal";
      this.socket.send({ type: "signal", to: from, data: rtc.errorSignal(frame.ref, code, err.message || "refused") });
      this.log(`Refused a connection from ${this.names.get(from) ?? from}: ${code}`);
    }
  }

  context() {
    return {
      dev: this.dev,
      trust: () => this.trustAnchor,
      crlNumber: () => Number(this.trustAnchor?.crl?.number ?? 0n),
      mergeCrl: async (der) => {
        try {
          const crl = await parseCrl(der, this.trustAnchor);
          if (!this.trustAnchor.crl || crl.number > this.trustAnchor.crl.number) this.trustAnchor.crl = crl;
        } catch { /* a CRL that does not verify is ignored */ }
      },
    };
  }

  log(text) {
    document.getElementById("incoming").append(el("p", { className: "muted refusal", textContent: text }));
  }

  card(record) {
    let c = this.cards.get(record.id);
    if (!c) {
      const from = this.names.get(record.from) ?? record.from;
      c = el("article", { className: "card" });
      c.dataset.handoff = record.id;
      c.append(el("h3", { className: "title", textContent: record.title || "(untitled session)" }),
        el("p", { className: "muted", textContent: `from ${from} · ${record.appId}` }),
        el("ul", { className: "items" }, ...record.items.map((i) => el("li", { textContent: `${i.name} · ${i.type} · ${human(i.size)}` }))),
        el("div", { className: "actions" }), el("p", { className: "state", role: "status" }));
      document.getElementById("incoming").prepend(c);
      this.cards.set(record.id, c);
    }
    return c;
  }

  ui() {
    return {
      offered: (record) => new Promise((resolve) => {
        const c = this.card(record);
        c.dataset.state = "offered";
        c.querySelector(".state").textContent = "Wants to hand you this session.";
        const accept = el("button", { className: "accept", textContent: "Accept" });
        const decline = el("button", { className: "decline", textContent: "Decline" });
        accept.onclick = () => { c.querySelector(".actions").replaceChildren(); resolve(true); };
        decline.onclick = () => { c.querySelector(".actions").replaceChildren(); c.dataset.state = "declined"; c.querySelector(".state").textContent = "Declined."; resolve(false); };
        c.querySelector(".actions").replaceChildren(accept, decline);
        if ("Notification" in window && Notification.permission === "granted") {
          new Notification("Handoff", { body: `${record.title} — from ${this.names.get(record.from) ?? "a device"}`, tag: record.id });
        }
      }),
      progress: (record, done, total) => {
        const c = this.card(record);
        c.dataset.state = "receiving";
        let bar = c.querySelector("progress");
        if (!bar) {
          bar = el("progress", { max: 1 });
          c.querySelector(".actions").replaceChildren(bar);
        }
        bar.max = Math.max(total, 1);
        bar.value = done;
        c.querySelector(".state").textContent = `Receiving: ${human(done)} of ${human(total)}`;
      },
      delivered: (record, resume) => {
        this.show(record).then(() => {
          const c = this.card(record);
          c.dataset.state = "delivered";
          c.querySelector(".state").textContent = "Received and verified (SHA-256).";
          const button = el("button", { className: "resume", textContent: "Resume here" });
          button.onclick = () => { button.disabled = true; resume(); };
          c.querySelector(".actions").replaceChildren(button);
        });
      },
      resumedSent: (record) => {
        const c = this.card(record);
        c.dataset.state = "resumed";
        c.querySelector(".state").textContent = "Resumed here: the other device knows.";
        c.querySelector(".actions").replaceChildren();
      },
      failed: (record, code, message) => {
        if (record) {
          const c = this.card(record);
          if (c.dataset.state !== "resumed") {
            c.dataset.state = "failed";
            c.querySelector(".state").textContent = `Stopped (${code}): ${message}. The sender retries.`;
          }
        } else if (code !== "channel-closed") {
          this.log(`A transfer stopped: ${code}`);
        }
      },
    };
  }

  async show(record) {
    const c = this.card(record);
    const list = c.querySelector(".items");
    list.replaceChildren();
    const context = Object.keys(record.context || {}).length ? JSON.stringify(record.context) : "";
    if (context) c.insertBefore(el("p", { className: "context muted", textContent: `context: ${context}` }), list);
    for (const item of record.items) {
      const blob = await itemBlob(record.id, item);
      const li = el("li");
      li.dataset.index = item.index;
      li.dataset.name = item.name;
      if (item.type === "message" || (item.mime || "").startsWith("text/plain") && item.size <= 65536) {
        li.append(el("div", { className: "message", textContent: await blob.text() }));
      } else if (item.type === "url") {
        const text = (await blob.text()).trim();
        const a = el("a", { textContent: text, rel: "noopener noreferrer", target: "_blank" });
        if (/^https?:\/\//i.test(text)) a.href = text;
        li.append(a);
      } else {
        const a = el("a", { className: "download", textContent: `${item.name} (${human(item.size)})`, download: item.name });
        a.href = URL.createObjectURL(blob);
        li.append(a);
      }
      list.append(li);
    }
  }
}

export { fromB64url };
