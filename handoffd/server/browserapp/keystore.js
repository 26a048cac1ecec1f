// IndexedDB: the device record (its non-extractable CryptoKey pair, ids, certificates).
const DB = "handoff";
const VERSION = 1;
const STORES = ["device", "handoffs", "chunks"];

let opened = null;
export function db() {
  if (opened) return opened;
  opened = new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, VERSION);
    req.onupgradeneeded = () => {
      for (const name of STORES) {
        if (!req.result.objectStoreNames.contains(name)) req.result.createObjectStore(name);
      }
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return opened;
}

function run(store, mode, fn) {
  return db().then((d) => new Promise((resolve, reject) => {
    const tx = d.transaction(store, mode);
    const req = fn(tx.objectStore(store));
    tx.oncomplete = () => resolve(req ? req.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  }));
}

export const get = (store, key) => run(store, "readonly", (s) => s.get(key));
export const put = (store, key, value) => run(store, "readwrite", (s) => { s.put(value, key); });
export const del = (store, key) => run(store, "readwrite", (s) => { s.delete(key); });
export const keys = (store) => run(store, "readonly", (s) => s.getAllKeys());
