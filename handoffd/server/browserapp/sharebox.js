// The page's side of the share target: registers the service worker (sw.js) and takes
// the share it kept in IndexedDB (files, text, link), once.
const DB = "handoff-share";
const STORE = "shares";
const ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export async function register() {
  if (!("serviceWorker" in navigator)) return null;
  return navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" });
}

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

// The share kept under `id` (the database is emptied: a share is taken once), or null.
export async function take(id) {
  if (!ID.test(id || "")) return null;
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, "readwrite");
      const store = tx.objectStore(STORE);
      const req = store.get(id);
      store.clear();  // a share not taken when its page opened is stale
      tx.oncomplete = () => resolve(req.result || null);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}
