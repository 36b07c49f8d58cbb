// The world visualizer's page: draws the zone from the frames of /world/stream (server-sent
// events carrying base64 of the binary frames described in server/src/viz/frame.rs; keep the
// decoder below in step with it), with pan and zoom, a heat map, shard borders and a time bar.
// Live: the time bar scrubs the history ring (GET /world/frame?tick=T). Replay
// (zone-replay --serve): it moves the shared playhead (POST /world/control).
// No library, no build step. `window.viz` exposes the page's state (the browser test reads it).
'use strict';

const FORMAT_VERSION = 1;
const $ = (id) => document.getElementById(id);
const V = (window.viz = {
  meta: null, mode: null, viewer: null,
  live: null,        // the stream's current frame
  shown: null,       // what is drawn (the live frame, or a frame from the history)
  following: true,   // live mode: drawing the stream, not the history
  history: [],       // live mode: ticks held by the server's history ring
  replay: null,      // replay mode: the playhead state
  frames: 0, keys: 0, bytes: 0, fps: 0, errors: [],
  aggregated: false,
  decodeMs: 0, drawMs: 0, // moving averages: what a frame costs the page
});

// ---- frame decoding ----------------------------------------------------------------------------

class Reader {
  constructor(bytes) { this.b = bytes; this.i = 0; }
  u8() { if (this.i >= this.b.length) throw new Error('frame cut short'); return this.b[this.i++]; }
  v() { // unsigned varint as a Number (exact below 2^53: every field but player ids)
    let r = 0, m = 1, b;
    do { b = this.u8(); r += (b & 0x7f) * m; m *= 128; } while (b & 0x80);
    return r;
  }
  s() { const v = this.v(); return v % 2 ? -(v + 1) / 2 : v / 2; }
  id() { // an id or id delta: a Number when it fits 49 bits, else a BigInt (player ids)
    const start = this.i; let r = 0, m = 1, n = 0, b;
    do { b = this.u8(); n++; if (n <= 7) r += (b & 0x7f) * m; m *= 128; } while (b & 0x80);
    if (n <= 7) return r;
    let big = 0n;
    for (let k = n - 1; k >= 0; k--) big = (big << 7n) | BigInt(this.b[start + k] & 0x7f);
    return big;
  }
}

function addId(a, d) {
  if (typeof a === 'bigint' || typeof d === 'bigint') return BigInt(a) + BigInt(d);
  const s = a + d;
  return Number.isSafeInteger(s) ? s : BigInt(a) + BigInt(d);
}

function header(r) {
  if (r.u8() !== 90 || r.u8() !== 86) throw new Error('not a visualizer frame');
  const ver = r.u8();
  if (ver !== FORMAT_VERSION) throw new Error('frame format ' + ver + ', this page reads ' + FORMAT_VERSION + ': reload');
  const ty = r.u8();
  const tick = r.v();
  const base = ty === 2 ? r.v() : null;
  const rate = r.v();
  const ns = r.v();
  const step = new Array(ns);
  for (let i = 0; i < ns; i++) step[i] = r.v();
  return { ty, tick, base, rate, step };
}

function emptyFrame(n) {
  return { n, ids: new Array(n), kind: new Uint16Array(n), shard: new Uint16Array(n),
    x: new Int32Array(n), y: new Int32Array(n), hp: new Int32Array(n) };
}

function decodeKey(bytes) {
  const r = new Reader(bytes);
  const h = header(r);
  if (h.ty !== 1) throw new Error('expected a key frame');
  const n = r.v();
  const f = emptyFrame(n);
  let id = 0;
  for (let i = 0; i < n; i++) {
    id = addId(id, r.id());
    f.ids[i] = id; f.kind[i] = r.v(); f.shard[i] = r.v(); f.x[i] = r.s(); f.y[i] = r.s(); f.hp[i] = r.s();
  }
  f.tick = h.tick; f.rate = h.rate; f.step = h.step;
  return f;
}

// Applies a diff to `base`; returns the new frame and the deaths it shows (positions).
function applyDiff(base, bytes) {
  const r = new Reader(bytes);
  const h = header(r);
  if (h.ty !== 2) throw new Error('expected a diff frame');
  if (h.base !== base.tick) throw new Error('diff for tick ' + h.base + ' applied to tick ' + base.tick);
  const bn = r.v(), nn = r.v();
  if (bn !== base.n) throw new Error('diff base has ' + bn + ' objects, not ' + base.n);
  const keep = new Uint8Array(bn).fill(1);
  const deaths = [];
  let c = r.v(), p = -1;
  for (let k = 0; k < c; k++) {
    p = p + r.v() + 1;
    keep[p] = 0;
    if (base.kind[p] !== 0) deaths.push(base.x[p], base.y[p]); // an NPC that went is an NPC that died
  }
  const kind = base.kind.slice(), shard = base.shard.slice(), x = base.x.slice(), y = base.y.slice(), hp = base.hp.slice();
  c = r.v(); p = -1;
  for (let k = 0; k < c; k++) {
    p = p + r.v() + 1;
    const mask = r.u8();
    if (mask & 1) { x[p] += r.s(); y[p] += r.s(); }
    if (mask & 2) {
      const v = r.s();
      if (kind[p] === 0 && v <= 0 && hp[p] > 0) deaths.push(x[p], y[p]); // a player fell
      hp[p] = v;
    }
    if (mask & 4) shard[p] = r.v();
    if (mask & 8) kind[p] = r.v();
  }
  c = r.v(); p = -1;
  const added = [];
  for (let k = 0; k < c; k++) {
    p = p + r.v() + 1;
    added.push({ at: p, id: r.id(), kind: r.v(), shard: r.v(), x: r.s(), y: r.s(), hp: r.s() });
  }
  const f = emptyFrame(nn);
  // Where each object was in the base frame: the page draws it moving from there (see drawable).
  f.px = new Int32Array(nn); f.py = new Int32Array(nn);
  let j = 0, a = 0;
  for (let i = 0; i < nn; i++) {
    if (a < added.length && added[a].at === i) {
      const o = added[a++];
      f.ids[i] = o.id; f.kind[i] = o.kind; f.shard[i] = o.shard; f.x[i] = o.x; f.y[i] = o.y; f.hp[i] = o.hp;
      f.px[i] = o.x; f.py[i] = o.y;
    } else {
      while (j < bn && !keep[j]) j++;
      if (j >= bn) throw new Error('diff object counts do not add up');
      f.ids[i] = base.ids[j]; f.kind[i] = kind[j]; f.shard[i] = shard[j]; f.x[i] = x[j]; f.y[i] = y[j]; f.hp[i] = hp[j];
      f.px[i] = base.x[j]; f.py[i] = base.y[j];
      j++;
    }
  }
  f.tick = h.tick; f.rate = h.rate; f.step = h.step;
  return { frame: f, deaths };
}

function b64bytes(s) {
  const bin = atob(s);
  const u = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
  return u;
}

// ---- view: pan, zoom, drawing ------------------------------------------------------------------

const canvas = $('map');
const ctx = canvas.getContext('2d');
const view = { scale: 1, ox: 0, oy: 0 }; // screen px = world dm * scale + offset
let dirty = true;
let hover = -1;
const KIND_COLORS = ['#ffffff', '#66bb6a', '#ef5350', '#42a5f5', '#ffca28', '#ab47bc', '#26c6da', '#ff7043', '#9ccc65', '#ec407a'];
const kindColor = (k) => KIND_COLORS[k % KIND_COLORS.length];
const AGGREGATE_ABOVE = 20000; // more visible objects than this: draw densities, not dots

function resize() {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(innerWidth * dpr);
  canvas.height = Math.round(innerHeight * dpr);
  canvas.style.width = innerWidth + 'px';
  canvas.style.height = innerHeight + 'px';
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  dirty = true;
}

function fit() {
  if (!V.meta) return;
  const [x0, y0, x1, y1] = V.meta.bounds_dm;
  const top = 40, bottom = 44;
  const w = innerWidth - 20, h = innerHeight - top - bottom - 10;
  view.scale = Math.min(w / (x1 - x0), h / (y1 - y0));
  view.ox = 10 + (w - (x1 - x0) * view.scale) / 2 - x0 * view.scale;
  view.oy = top + 5 + (h - (y1 - y0) * view.scale) / 2 + y1 * view.scale;
  dirty = true;
}

// World y grows north; the screen's grows down.
const sx = (x) => x * view.scale + view.ox;
const sy = (y) => view.oy - y * view.scale;

function heatGrid(f) {
  const mode = $('heat').value;
  if (mode === 'none' || !V.meta) return null;
  const [x0, y0, x1, y1] = V.meta.bounds_dm;
  const cols = V.meta.shard_cols * 8, rows = V.meta.shard_rows * 8;
  let cells;
  if (mode === 'deaths') {
    cells = deathGrid();
  } else {
    cells = new Float32Array(cols * rows);
    for (let i = 0; i < f.n; i++) {
      if (mode === 'players' && f.kind[i] !== 0) continue;
      const c = Math.min(cols - 1, Math.max(0, Math.floor((f.x[i] - x0) * cols / (x1 - x0))));
      const r = Math.min(rows - 1, Math.max(0, Math.floor((f.y[i] - y0) * rows / (y1 - y0))));
      cells[r * cols + c]++;
    }
  }
  return { cells, cols, rows, x0, y0, x1, y1 };
}

// Deaths decay with a half-life of 20 s of zone time.
let deaths = null;
function deathGrid() {
  const cols = V.meta.shard_cols * 8, rows = V.meta.shard_rows * 8;
  if (!deaths || deaths.cells.length !== cols * rows) deaths = { cells: new Float32Array(cols * rows), tick: null };
  return deaths.cells;
}
function addDeaths(list, tick) {
  if (!V.meta) return;
  const cells = deathGrid();
  if (deaths.tick !== null && tick > deaths.tick) {
    const k = Math.pow(0.5, (tick - deaths.tick) / (20 * 60));
    for (let i = 0; i < cells.length; i++) cells[i] *= k;
  }
  deaths.tick = tick;
  const [x0, y0, x1, y1] = V.meta.bounds_dm;
  const cols = V.meta.shard_cols * 8, rows = V.meta.shard_rows * 8;
  for (let i = 0; i < list.length; i += 2) {
    const c = Math.min(cols - 1, Math.max(0, Math.floor((list[i] - x0) * cols / (x1 - x0))));
    const r = Math.min(rows - 1, Math.max(0, Math.floor((list[i + 1] - y0) * rows / (y1 - y0))));
    cells[r * cols + c] += 1;
  }
}

// A live frame as drawn now: objects part of the way from where the previous frame had them to
// where this one has them, over the time between the two frames' arrivals (so the page shows the
// zone one frame late, but moving smoothly even at a few frames per second). Other frames (a key
// frame, the history, a replay) are drawn as they are.
function drawable(f) {
  if (!f || !f.px || !(f.span > 0)) return f;
  const t = Math.min(1, (performance.now() - f.arrived) / f.span);
  if (t >= 1) return f;
  if (!f.ix) { f.ix = new Int32Array(f.n); f.iy = new Int32Array(f.n); }
  for (let i = 0; i < f.n; i++) {
    f.ix[i] = f.px[i] + (f.x[i] - f.px[i]) * t;
    f.iy[i] = f.py[i] + (f.y[i] - f.py[i]) * t;
  }
  dirty = true; // keep drawing until the objects reach this frame's positions
  return Object.assign({}, f, { x: f.ix, y: f.iy });
}

function draw() {
  dirty = false;
  const W = innerWidth, H = innerHeight;
  ctx.fillStyle = '#0e1217';
  ctx.fillRect(0, 0, W, H);
  if (!V.meta) return;
  const [x0, y0, x1, y1] = V.meta.bounds_dm;
  ctx.fillStyle = '#141b24';
  ctx.fillRect(sx(x0), sy(y1), (x1 - x0) * view.scale, (y1 - y0) * view.scale);
  const f = drawable(V.shown);
  if (f) {
    const g = heatGrid(f);
    if (g) {
      let max = 0;
      for (const v of g.cells) if (v > max) max = v;
      const cw = (g.x1 - g.x0) / g.cols, ch = (g.y1 - g.y0) / g.rows;
      if (max > 0) {
        for (let r = 0; r < g.rows; r++) for (let c = 0; c < g.cols; c++) {
          const v = g.cells[r * g.cols + c];
          if (v <= 0) continue;
          ctx.fillStyle = 'rgba(255,120,30,' + (0.04 + 0.5 * (v / max) * (v / max)).toFixed(3) + ')';
          const px = sx(g.x0 + c * cw), py = sy(g.y0 + (r + 1) * ch);
          ctx.fillRect(px, py, cw * view.scale + 0.5, ch * view.scale + 0.5);
        }
      }
    }
    drawObjects(f, W, H);
  }
  if ($('shards').checked) drawShards(f);
  ctx.strokeStyle = '#5b6b84';
  ctx.lineWidth = 1;
  ctx.strokeRect(sx(x0), sy(y1), (x1 - x0) * view.scale, (y1 - y0) * view.scale);
  if (f && hover >= 0 && hover < f.n) {
    ctx.strokeStyle = '#fff';
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(sx(f.x[hover]), sy(f.y[hover]), 7, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function drawObjects(f, W, H) {
  let visible = 0;
  for (let i = 0; i < f.n; i++) {
    const px = sx(f.x[i]), py = sy(f.y[i]);
    if (px >= 0 && py >= 0 && px < W && py < H) visible++;
  }
  V.aggregated = visible > AGGREGATE_ABOVE;
  if (V.aggregated) {
    // Low zoom on a big zone: one pixel cell per 2 × 2 screen pixels, brightness by count,
    // hue by the most common kind is too costly; players stay drawn on top as dots.
    const cw = Math.ceil(W / 2), chh = Math.ceil(H / 2);
    const counts = new Uint16Array(cw * chh);
    let max = 1;
    for (let i = 0; i < f.n; i++) {
      const px = (sx(f.x[i]) / 2) | 0, py = (sy(f.y[i]) / 2) | 0;
      if (px < 0 || py < 0 || px >= cw || py >= chh) continue;
      const k = py * cw + px;
      const v = ++counts[k];
      if (v > max) max = v;
    }
    const img = ctx.createImageData(cw, chh);
    const lmax = Math.log(1 + max);
    for (let k = 0; k < counts.length; k++) {
      const v = counts[k];
      if (!v) continue;
      const t = Math.log(1 + v) / lmax;
      img.data[4 * k] = 90 + 165 * t; img.data[4 * k + 1] = 200 * t + 40; img.data[4 * k + 2] = 255 - 120 * t; img.data[4 * k + 3] = 255;
    }
    // putImageData ignores the transform and alpha: draw through a scratch canvas.
    scratch.width = cw; scratch.height = chh;
    scratch.getContext('2d').putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(scratch, 0, 0, cw * 2, chh * 2);
  }
  const size = Math.max(2, Math.min(6, view.scale * 8));
  const kinds = V.meta.kinds.length;
  for (let k = 0; k < kinds; k++) {
    if (V.aggregated && k !== 0) continue;
    ctx.fillStyle = kindColor(k);
    ctx.beginPath();
    for (let i = 0; i < f.n; i++) {
      if (f.kind[i] !== k) continue;
      const px = sx(f.x[i]), py = sy(f.y[i]);
      if (px < -5 || py < -5 || px > W + 5 || py > H + 5) continue;
      const s = k === 0 ? size + 2 : size;
      ctx.rect(px - s / 2, py - s / 2, s, s);
    }
    ctx.fill();
  }
}
const scratch = document.createElement('canvas');

function drawShards(f) {
  const [x0, y0, x1, y1] = V.meta.bounds_dm;
  const cols = V.meta.shard_cols, rows = V.meta.shard_rows;
  const cw = (x1 - x0) / cols, ch = (y1 - y0) / rows;
  ctx.strokeStyle = 'rgba(120,160,220,0.55)';
  ctx.lineWidth = 1;
  ctx.setLineDash([6, 4]);
  ctx.beginPath();
  for (let c = 1; c < cols; c++) { ctx.moveTo(sx(x0 + c * cw), sy(y0)); ctx.lineTo(sx(x0 + c * cw), sy(y1)); }
  for (let r = 1; r < rows; r++) { ctx.moveTo(sx(x0), sy(y0 + r * ch)); ctx.lineTo(sx(x1), sy(y0 + r * ch)); }
  ctx.stroke();
  ctx.setLineDash([]);
  if (!f) return;
  const objs = new Array(cols * rows).fill(0), pls = new Array(cols * rows).fill(0);
  for (let i = 0; i < f.n; i++) { objs[f.shard[i]]++; if (f.kind[i] === 0) pls[f.shard[i]]++; }
  const rate = (f.rate / 1000).toFixed(1);
  ctx.font = '10px system-ui, sans-serif';
  for (let i = 0; i < cols * rows; i++) {
    // Shard i covers column i % cols, row i / cols (row 0 at the south edge).
    const c = i % cols, r = Math.floor(i / cols);
    const px = sx(x0 + c * cw) + 4, py = sy(y0 + (r + 1) * ch) + 12;
    const step = f.step[i] !== undefined ? (f.step[i] / 1000).toFixed(2) + ' ms' : '–';
    const lines = ['shard ' + i + ' · ' + rate + ' ticks/s · ' + step, objs[i] + ' objects · ' + pls[i] + ' players'];
    const w = Math.max(...lines.map((l) => ctx.measureText(l).width));
    if (cw * view.scale < w + 8 || ch * view.scale < 32) continue;
    ctx.fillStyle = 'rgba(14,18,23,0.75)';
    ctx.fillRect(px - 2, py - 10, w + 4, 26);
    ctx.fillStyle = '#9fc0ee';
    lines.forEach((l, k) => ctx.fillText(l, px, py + 12 * k));
  }
}

function loop() {
  if (dirty) {
    const t0 = performance.now();
    draw();
    V.drawMs = 0.9 * V.drawMs + 0.1 * (performance.now() - t0);
  }
  requestAnimationFrame(loop);
}

// ---- hover, pan, zoom --------------------------------------------------------------------------

function nearest(mx, my) {
  const f = V.shown;
  if (!f) return -1;
  let best = -1, bd = 8 * 8;
  for (let i = 0; i < f.n; i++) {
    const dx = sx(f.x[i]) - mx, dy = sy(f.y[i]) - my, d = dx * dx + dy * dy;
    if (d < bd) { bd = d; best = i; }
  }
  return best;
}

function describe(f, i) {
  const kind = V.meta.kinds[f.kind[i]] || { name: 'kind ' + f.kind[i], hp_max: 0 };
  const id = f.ids[i];
  const name = typeof id === 'bigint' && id >= 1n << 63n ? 'player ' + (id - (1n << 63n)) : 'object ' + id;
  return '<b>' + name + '</b> (' + kind.name + ')<br>hp ' + f.hp[i] + ' / ' + kind.hp_max + ' · shard #' + f.shard[i] +
    '<br>at ' + (f.x[i] / 10).toFixed(1) + ', ' + (f.y[i] / 10).toFixed(1) + ' m';
}

let drag = null;
canvas.addEventListener('mousedown', (e) => { drag = { x: e.clientX, y: e.clientY, ox: view.ox, oy: view.oy }; canvas.classList.add('dragging'); });
addEventListener('mouseup', () => { drag = null; canvas.classList.remove('dragging'); });
canvas.addEventListener('mousemove', (e) => {
  if (drag) {
    view.ox = drag.ox + e.clientX - drag.x;
    view.oy = drag.oy + e.clientY - drag.y;
    dirty = true;
    return;
  }
  const i = nearest(e.clientX, e.clientY);
  const tip = $('tip');
  if (i !== hover) { hover = i; dirty = true; }
  if (i >= 0) {
    tip.innerHTML = describe(V.shown, i);
    tip.style.left = e.clientX + 14 + 'px';
    tip.style.top = e.clientY + 14 + 'px';
    tip.style.display = 'block';
  } else {
    tip.style.display = 'none';
  }
});
canvas.addEventListener('mouseleave', () => { $('tip').style.display = 'none'; hover = -1; dirty = true; });
canvas.addEventListener('wheel', (e) => {
  e.preventDefault();
  const k = Math.exp(-e.deltaY * 0.0015);
  const wx = (e.clientX - view.ox) / view.scale, wy = (view.oy - e.clientY) / view.scale;
  view.scale *= k;
  view.ox = e.clientX - wx * view.scale;
  view.oy = e.clientY + wy * view.scale;
  dirty = true;
}, { passive: false });
addEventListener('resize', () => { resize(); fit(); });
$('fit').onclick = fit;
$('heat').onchange = () => { dirty = true; };
$('shards').onchange = () => { dirty = true; };

// ---- the stream ----------------------------------------------------------------------------------

let es = null, pingTimer = null;
let fpsWindow = [];

function banner(text, retry) {
  const b = $('banner');
  b.textContent = text + ' ';
  if (retry) {
    const btn = document.createElement('button');
    btn.textContent = 'reconnect';
    btn.onclick = () => { b.style.display = 'none'; connect(); };
    b.appendChild(btn);
  }
  b.style.display = text ? 'block' : 'none';
}

function onFrame(data, key) {
  try {
    const t0 = performance.now();
    const bytes = b64bytes(data);
    if (key) {
      V.live = decodeKey(bytes);
      V.live.arrived = performance.now();
      V.keys++;
    } else {
      if (!V.live) throw new Error('a diff arrived before any key frame');
      const r = applyDiff(V.live, bytes);
      const now = performance.now();
      // Move from the previous frame's positions over the gap between frames (at most 1 s).
      r.frame.arrived = now;
      r.frame.span = V.live.arrived ? Math.min(1000, now - V.live.arrived) : 0;
      V.live = r.frame;
      if (r.deaths.length) addDeaths(r.deaths, r.frame.tick);
    }
    V.decodeMs = 0.9 * V.decodeMs + 0.1 * (performance.now() - t0);
    V.frames++;
    V.bytes += bytes.length;
    const now = performance.now();
    fpsWindow.push(now);
    while (fpsWindow.length && fpsWindow[0] < now - 2000) fpsWindow.shift();
    V.fps = fpsWindow.length / 2;
    $('fps').textContent = V.fps.toFixed(1);
    $('bpf').textContent = Math.round(V.bytes / V.frames).toLocaleString('en');
    if (V.mode === 'replay' || V.following) show(V.live);
  } catch (err) {
    V.errors.push(String(err));
    console.error('visualizer: bad frame:', err);
    if (es) es.close();
    banner('a frame did not decode (' + err.message + ')', true);
  }
}

function show(f) {
  V.shown = f;
  let players = 0;
  for (let i = 0; i < f.n; i++) if (f.kind[i] === 0) players++;
  $('tick').textContent = f.tick;
  $('count').textContent = f.n;
  $('players').textContent = players;
  if (V.mode === 'live') {
    $('when').textContent = V.following ? 'live' : 'history: ' + ((V.live ? V.live.tick - f.tick : 0) / 60).toFixed(0) + ' s ago';
  }
  dirty = true;
}

function connect() {
  if (es) es.close();
  $('conn').textContent = 'connecting…';
  es = new EventSource('/world/stream');
  es.addEventListener('hello', (e) => {
    const h = JSON.parse(e.data);
    V.viewer = h.viewer;
    $('conn').textContent = 'viewer ' + h.viewer;
    clearInterval(pingTimer);
    pingTimer = setInterval(ping, h.ping_every_s * 1000);
  });
  es.addEventListener('key', (e) => onFrame(e.data, true));
  es.addEventListener('diff', (e) => onFrame(e.data, false));
  es.addEventListener('state', (e) => onReplayState(JSON.parse(e.data)));
  es.addEventListener('bye', (e) => {
    const why = JSON.parse(e.data).reason;
    es.close();
    clearInterval(pingTimer);
    $('conn').textContent = 'disconnected';
    banner(why === 'idle' ? 'Disconnected: this page was idle (hidden) too long.' : 'The server is shutting down.', true);
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      $('conn').textContent = 'disconnected';
      banner('The stream was refused or ended (the server may be at its viewer limit, --viz-max-viewers).', true);
    } else {
      $('conn').textContent = 'reconnecting…';
    }
  };
}

function ping() {
  if (V.viewer === null || document.visibilityState !== 'visible') return;
  fetch('/world/ping?viewer=' + V.viewer, { method: 'POST' }).then((r) => {
    if (r.status === 404) connect();
  }).catch(() => {});
}

// ---- time: the history ring (live) or the journal (replay) --------------------------------------

const scrub = $('scrub');
let dragging = false, playTimer = null, seekTimer = null;
scrub.addEventListener('pointerdown', () => { dragging = true; });
addEventListener('pointerup', () => { dragging = false; });

async function refreshHistory() {
  try {
    const r = await fetch('/world/history');
    const h = await r.json();
    V.history = h.ticks;
    scrub.max = V.history.length; // the last position is "live"
    if (V.following && !dragging) scrub.value = scrub.max;
  } catch (err) { /* the next refresh tries again */ }
}

async function showHistory(index) {
  if (index >= V.history.length) {
    V.following = true;
    $('live').classList.add('live-on');
    if (V.live) show(V.live);
    return;
  }
  const tick = V.history[Math.max(0, index)];
  const r = await fetch('/world/frame?tick=' + tick);
  if (!r.ok) { banner('history frame ' + tick + ': ' + (await r.text()), false); return; }
  const f = decodeKey(new Uint8Array(await r.arrayBuffer()));
  V.following = false;
  $('live').classList.remove('live-on');
  show(f);
}

function control(query) {
  return fetch('/world/control?' + query, { method: 'POST' })
    .then((r) => (r.ok ? r.json() : r.text().then((t) => { throw new Error(t); })))
    .then(onReplayState)
    .catch((err) => banner('replay: ' + err.message, false));
}

function onReplayState(s) {
  V.replay = s;
  scrub.max = s.end;
  if (!dragging) scrub.value = s.tick;
  $('play').textContent = s.playing ? '❚❚' : '▶';
  let text = 'tick ' + s.tick + ' / ' + s.end;
  if (s.indexed < s.end && !s.error) text += ' · indexing ' + Math.floor((100 * s.indexed) / Math.max(1, s.end)) + '%';
  if (s.playing) text += ' · ' + s.achieved_ticks_per_s.toFixed(0) + ' ticks/s';
  $('when').textContent = text;
  if (s.error) banner('replay: ' + s.error, false);
}

function onScrub() {
  if (V.mode === 'replay') {
    // The value now: a state event may move the slider before the timer fires.
    const tick = scrub.value;
    clearTimeout(seekTimer);
    seekTimer = setTimeout(() => control('op=seek&tick=' + tick), 60);
  } else {
    stopHistoryPlay();
    showHistory(Number(scrub.value));
  }
}
scrub.addEventListener('input', onScrub);
scrub.addEventListener('change', onScrub);

function stopHistoryPlay() { clearInterval(playTimer); playTimer = null; if (V.mode === 'live') $('play').textContent = '▶'; }

$('back').onclick = () => {
  if (V.mode === 'replay') return control('op=step&by=-1');
  stopHistoryPlay();
  scrub.value = Math.max(0, Number(scrub.value) - 1);
  showHistory(Number(scrub.value));
};
$('fwd').onclick = () => {
  if (V.mode === 'replay') return control('op=step&by=1');
  stopHistoryPlay();
  scrub.value = Math.min(Number(scrub.max), Number(scrub.value) + 1);
  showHistory(Number(scrub.value));
};
$('play').onclick = () => {
  const speed = Number($('speed').value);
  if (V.mode === 'replay') return control(V.replay && V.replay.playing ? 'op=pause' : 'op=play&speed=' + speed);
  // Live: play the history ring forward (one stored frame is about a second of zone time).
  if (playTimer) return stopHistoryPlay();
  $('play').textContent = '❚❚';
  playTimer = setInterval(() => {
    const next = Number(scrub.value) + 1;
    scrub.value = next;
    showHistory(next);
    if (next >= V.history.length) stopHistoryPlay();
  }, 1000 / speed);
};
$('speed').onchange = () => {
  if (V.mode === 'replay' && V.replay && V.replay.playing) control('op=play&speed=' + $('speed').value);
  else if (playTimer) { stopHistoryPlay(); $('play').onclick(); }
};
$('live').onclick = () => { stopHistoryPlay(); scrub.value = scrub.max; showHistory(V.history.length); };

// ---- start ---------------------------------------------------------------------------------------

function legend() {
  $('legend').innerHTML = V.meta.kinds
    .map((k, i) => '<div><span class="sw" style="background:' + kindColor(i) + '"></span>' + k.name + '</div>')
    .join('');
}

async function start() {
  resize();
  requestAnimationFrame(loop);
  const r = await fetch('/world/meta');
  V.meta = await r.json();
  V.mode = V.meta.mode;
  $('zone').textContent = V.meta.zone;
  $('mode').textContent = V.mode === 'replay' ? 'replay' : 'live';
  document.title = V.meta.zone + ' · zone visualizer';
  legend();
  fit();
  if (V.mode === 'replay') {
    $('live').style.display = 'none';
  } else {
    $('live').classList.add('live-on');
    await refreshHistory();
    setInterval(refreshHistory, 5000);
  }
  connect();
}

start().catch((err) => { console.error('visualizer: cannot start:', err); banner('cannot start: ' + err.message, true); });
