// The sending view: pick files, text or a link and a target device; a progress bar.
// Shared files (the PWA share target) arrive here too (see sw.js).
import * as device from "./device.js";
import * as rtc from "./rtc.js";
import { buildOffer, runSender } from "./sendproto.js";

const $ = (id) => document.getElementById(id);

export class Sender {
  constructor(receiver) {
    this.receiver = receiver;  // for the trust anchor, replay cache, requests and ICE servers
    this.shared = [];
    $("send-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.send(); });
  }

  targets(devices, online, self) {
    const select = $("send-to");
    const current = select.value;
    select.replaceChildren();
    for (const d of devices) {
      if (d.device_id === self || d.revoked) continue;
      const opt = new Option(`${d.name}${online.has(d.device_id) ? "" : " (offline)"}`, d.device_id);
      opt.disabled = !online.has(d.device_id);
      select.append(opt);
    }
    if (current) select.value = current;
    if (!select.value) {
      const first = [...select.options].find((o) => !o.disabled);
      if (first) select.value = first.value;
    }
  }

  share(files, text, url) {  // from the share target
    this.shared = files;
    const list = $("send-shared");
    list.replaceChildren(...files.map((f) => {
      const li = document.createElement("li");
      li.textContent = `${f.name} · ${f.size} bytes`;
      return li;
    }));
    if (text) $("send-text").value = text;
    if (url) $("send-url").value = url;
    $("send-state").textContent = files.length ? `${files.length} shared file(s) ready to send` : "Shared: choose a device and send.";
    $("send").dataset.state = "shared";
  }

  items() {
    const items = [];
    const text = $("send-text").value;
    if (text.trim()) items.push({ type: "message", name: "message.txt", mime: "text/plain", blob: new Blob([text]) });
    const url = $("send-url").value.trim();
    if (url) items.push({ type: "url", name: "link.url", mime: "text/uri-list", blob: new Blob([url]) });
    for (const f of [...$("send-files").files, ...this.shared]) {
      items.push({ type: "document", name: f.name, mime: f.type || "application/octet-stream", blob: f });
    }
    return items;
  }

  async send() {
    const r = this.receiver;
    const target = $("send-to").value;
    const items = this.items();
    const state = (text, code) => { $("send-state").textContent = text; $("send").dataset.state = code; };
    if (!target) return state("Choose a device that is online.", "invalid");
    if (!items.length) return state("Add text, a link or files.", "invalid");
    $("send-button").disabled = true;
    const bar = $("send-progress");
    bar.hidden = false;
    bar.value = 0;
    try {
      state("Preparing…", "preparing");
      if (!r.trustAnchor) await r.refreshTrust();
      const firstLine = ($("send-text").value.trim().split("\n")[0] || items[0].name).slice(0, 200);
      const built = await buildOffer(r.dev, target, { title: firstLine, items });
      $("send").dataset.handoff = built.id;
      state("Connecting…", "connecting");
      const channel = await rtc.call(r.dev, r.trustAnchor, r.replay, r.requests, target, await r.iceServers());
      state("Sending…", "sending");
      await runSender(channel, built, {
        progress: (done, total) => { bar.max = Math.max(total, 1); bar.value = done; if (done < total) state(`Sending: ${Math.round((100 * done) / Math.max(total, 1))} %`, "sending"); },
        state,
      });
      this.shared = [];
      $("send-shared").replaceChildren();
      $("send-files").value = "";
    } catch (err) {
      state(`Could not send: ${err.message}` + (err.code ? ` (${err.code})` : ""), "failed");
    } finally {
      $("send-button").disabled = false;
    }
  }
}

export { device };
