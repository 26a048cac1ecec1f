// The service worker: the installed app's share target for files ("Share → Handoff").
// The Web Share Target API delivers a share as a POST multipart/form-data navigation to
// /app/share (the manifest's share_target). This worker takes it before it leaves the
// browser: the files never reach the server (the page sends them end-to-end encrypted over
// WebRTC). It keeps the share in IndexedDB (store "shares" of the page's "handoff-share"
// database) and redirects to /app/share?shared=<id>, where the page picks it up.
"use strict";

const DB = "handoff-share";
const STORE = "shares";
const MAX_FILES = 100;
const MAX_TEXT = 10000;

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (ev) => ev.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== "POST" || url.origin !== location.origin || url.pathname !== "/app/share") return;
  // Not kept (unreadable form, IndexedDB refused): the page says the share was lost.
  ev.respondWith(keep(ev.request).catch(() => Response.redirect("/app/share?shared=lost", 303)));
});

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function field(form, name, max) {
  const value = form.get(name);
  return typeof value === "string" ? value.slice(0, max) : "";
}

async function keep(request) {
  let form;
  try {
    form = await request.formData();
  } catch {
    return Response.redirect("/app/share?shared=lost", 303);
  }
  const files = form.getAll("files").filter((f) => f instanceof File).slice(0, MAX_FILES);
  const share = {
    title: field(form, "title", 200),
    text: field(form, "text", MAX_TEXT),
    url: field(form, "url", 2000),
    files,
    at: Date.now(),
  };
  const id = crypto.randomUUID();
  const db = await openDb();
  await new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(share, id);
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
  db.close();
  return Response.redirect(`/app/share?shared=${id}`, 303);
}
