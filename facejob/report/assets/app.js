/* facejob review page. Data comes from scripts (b/BUILD/data/*.js) that call FJ.put(key, value):
 * pages opened from file:// may not fetch() local files. Everything from the archive (file names,
 * S3 keys, names typed by people) reaches the DOM through textContent or attribute values only,
 * never innerHTML. */
(function () {
  "use strict";
  var BUILD = document.documentElement.getAttribute("data-build");
  var BASE = "b/" + BUILD + "/";
  var data = {}, waiting = {};
  var meta = null;

  window.FJ = {
    put: function (key, value) {
      data[key] = value;
      var fs = waiting[key] || [];
      delete waiting[key];
      fs.forEach(function (f) { f[0](value); });
      if (key === "meta") start(value);
    },
    ready: null,          // ms after navigation start when the people page was first usable
    corrections: function () { return corrections.slice(); }
  };

  function load(key) {
    if (key in data) return Promise.resolve(data[key]);
    return new Promise(function (resolve, reject) {
      var first = !(key in waiting);
      (waiting[key] = waiting[key] || []).push([resolve, reject]);
      if (!first) return;
      var s = document.createElement("script");
      s.src = BASE + "data/" + key + ".js";
      s.onerror = function () {
        var fs = waiting[key] || [];
        delete waiting[key];
        fs.forEach(function (f) { f[1](new Error("cannot load " + s.src)); });
      };
      document.head.appendChild(s);
    });
  }

  // el("div", {class: "x", text: "...", onclick: f}, child, ...): text and attributes only.
  function el(tag, attrs) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.append(c);      // strings become text nodes
    }
    return e;
  }

  function $(id) { return document.getElementById(id); }
  function fmt(x, nd) { return x === null || x === undefined ? "–" : Number(x).toFixed(nd === undefined ? 2 : nd); }
  function fileName(uri) { var p = uri.split("/"); return p[p.length - 1] || uri; }
  function plural(n, one, many) { return n.toLocaleString() + " " + (n === 1 ? one : many); }

  function thumb(cell, title) {
    var t = meta.thumb, cols = meta.sprite_cols, k = cell % meta.sprite_cells;
    var d = el("div", {class: "thumb", title: title || null});
    d.style.backgroundImage = "url(\"" + BASE + "thumbs/" + Math.floor(cell / meta.sprite_cells) + ".jpg\")";
    d.style.backgroundPosition = "-" + (k % cols) * t + "px -" + Math.floor(k / cols) * t + "px";
    return d;
  }

  // ------------------------------------------------------------------ data access
  // Card: [pos, cluster_id, faces, photos, name, conf, given, flagged, thumb cells, faces file]
  function card(pos) {
    return load("people/" + Math.floor(pos / meta.people_chunk)).then(function (cards) {
      return cards[pos % meta.people_chunk];
    });
  }
  // Face: [face_id, photo, face_idx, cell, doubt, flagged, label, prob, labelled, chip, near_same, near_other]
  function members(c) {
    return load("faces/" + c[9]).then(function (chunk) { return {faces: chunk.clusters[c[0]], photos: chunk.photos}; });
  }

  // ------------------------------------------------------------------ corrections
  var KEY = null, corrections = [], picked = {};

  function restore() {
    KEY = "facejob-corrections:" + meta.out;
    try { corrections = JSON.parse(localStorage.getItem(KEY) || "[]"); } catch (e) { corrections = []; }
    if (!Array.isArray(corrections)) corrections = [];
  }
  function save() {
    try { localStorage.setItem(KEY, JSON.stringify(corrections)); } catch (e) { /* private mode: memory only */ }
    bar();
  }
  function now() { return new Date().toISOString().replace(/\.\d+Z$/, "Z"); }
  function removedFrom(clusterId) {
    var out = {};
    corrections.forEach(function (c) { if (c.kind === "not_person" && c.cluster_id === clusterId) out[c.face_id] = true; });
    return out;
  }
  function pendingName(clusterId) {
    var name = null;
    corrections.forEach(function (c) { if (c.kind === "name" && c.cluster_id === clusterId) name = c.name; });
    return name;
  }
  function shownName(c) { var p = pendingName(c[1]); return p !== null ? p : c[4]; }

  function setName(c, name) {
    name = name.trim();
    if (!name || name === shownName(c)) return Promise.resolve();
    return members(c).then(function (m) {
      var gone = removedFrom(c[1]);
      corrections = corrections.filter(function (x) { return !(x.kind === "name" && x.cluster_id === c[1]); });
      corrections.push({kind: "name", name: name, cluster_id: c[1],
                        face_ids: m.faces.map(function (f) { return f[0]; }).filter(function (f) { return !gone[f]; }),
                        at: now()});
      save();
    });
  }
  function toggleNotPerson(c, face, m) {
    var i = corrections.findIndex(function (x) { return x.kind === "not_person" && x.face_id === face[0] && x.cluster_id === c[1]; });
    if (i >= 0) { corrections.splice(i, 1); save(); return false; }
    var gone = removedFrom(c[1]);
    var entry = {kind: "not_person", face_id: face[0], cluster_id: c[1],
                 others: m.faces.map(function (f) { return f[0]; }).filter(function (f) { return f !== face[0] && !gone[f]; }),
                 at: now()};
    var name = shownName(c);
    if (name) entry.name = name;
    corrections.push(entry);
    save();
    return true;
  }
  function samePerson() {
    var ps = Object.keys(picked).map(Number);
    if (ps.length < 2) return;
    Promise.all(ps.map(function (p) { return card(p).then(function (c) { return members(c).then(function (m) { return [c, m]; }); }); }))
      .then(function (cms) {
        corrections.push({kind: "same_person", cluster_ids: cms.map(function (x) { return x[0][1]; }),
                          face_ids: cms.map(function (x) {
                            var gone = removedFrom(x[0][1]);
                            return x[1].faces.map(function (f) { return f[0]; }).filter(function (f) { return !gone[f]; });
                          }), at: now()});
        picked = {};
        save();
        route();
      });
  }
  function download() {
    var doc = {facejob: "corrections", version: 1, out: meta.out, build: meta.build, corrections: corrections};
    var blob = new Blob([JSON.stringify(doc, null, 1)], {type: "application/json"});
    var a = el("a", {href: URL.createObjectURL(blob), download: "corrections.json"});
    document.body.append(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  function bar() {
    var n = corrections.length, p = Object.keys(picked).length;
    $("corr-count").textContent = n ? plural(n, "correction", "corrections") + " not yet applied" : "No corrections yet";
    $("download").disabled = $("clear").disabled = !n;
    $("download").className = n ? "primary" : "";
    $("same").disabled = p < 2;
    $("same").textContent = p ? "Same person (" + p + " selected)" : "Same person";
  }

  // ------------------------------------------------------------------ people page
  var observer = null;

  function nameBox(c) {
    var pending = pendingName(c[1]);
    var input = el("input", {class: "name" + (pending !== null ? " pending" : c[6] ? " given" : c[4] ? " predicted" : ""),
                             placeholder: "Name this person", "aria-label": "Name", "data-cluster": String(c[1])});
    input.value = shownName(c) || "";
    input.addEventListener("change", function () {
      setName(c, input.value).then(function () { input.className = "name pending"; });
    });
    input.addEventListener("keydown", function (ev) { if (ev.key === "Enter") input.blur(); });
    return input;
  }
  function confText(c) {
    if (pendingName(c[1]) !== null) return "named here (download to apply)";
    if (c[6]) return "named by you";
    if (c[4]) return "predicted, " + Math.round(c[5] * 100) + "% sure";
    return "";
  }

  function cardView(c) {
    var thumbs = el("a", {class: "thumbs", href: "#person/" + c[0], title: "Open this person's faces"});
    c[8].forEach(function (cell) { thumbs.append(thumb(cell)); });
    var box = el("input", {type: "checkbox"});
    box.checked = !!picked[c[0]];
    var node = el("div", {class: "card" + (picked[c[0]] ? " picked" : ""), "data-pos": String(c[0])});
    box.addEventListener("change", function () {
      if (box.checked) picked[c[0]] = true; else delete picked[c[0]];
      node.className = "card" + (box.checked ? " picked" : "");
      bar();
    });
    node.append(thumbs,
      el("div", {class: "row"}, nameBox(c), el("span", {class: "conf", text: confText(c)})),
      el("div", {class: "row"},
        el("span", {class: "count", text: plural(c[2], "face", "faces") + " · " + plural(c[3], "photo", "photos")}),
        c[7] ? el("span", {class: "badge", text: c[7] + " doubtful"}) : null,
        el("label", {class: "pick"}, box, "select"),
        el("a", {class: "open", href: "#person/" + c[0], text: "open →"})));
    return node;
  }

  function peopleView(view) {
    view.append(el("h1", {text: plural(meta.people, "person", "people") + " · " + plural(meta.faces, "face", "faces") +
                                  " · " + plural(meta.photos, "photo", "photos")}),
                el("p", {class: "note", text: "Largest first. Type a name and press Enter to name a person; tick two or more " +
                                              "cards and press “Same person” to join them; open a person to take faces out. " +
                                              "Download the corrections and run: facejob reduce OUT --corrections corrections.json"}));
    var grid = el("div", {class: "grid", id: "people"});
    var sentinel = el("div", {class: "sentinel"});
    view.append(grid, sentinel);
    var next = 0, busy = false;
    function more() {
      if (busy || next >= meta.people_files) return Promise.resolve();
      busy = true;
      return load("people/" + next).then(function (cards) {
        var frag = document.createDocumentFragment();
        cards.forEach(function (c) { frag.append(cardView(c)); });
        grid.append(frag);
        next += 1;
        busy = false;
        if (next >= meta.people_files) sentinel.remove();
      });
    }
    observer = new IntersectionObserver(function (es) {
      if (es.some(function (e) { return e.isIntersecting; })) more().then(function () { observer && observer.takeRecords(); });
    }, {rootMargin: "800px"});
    observer.observe(sentinel);
    return more().then(function () {
      if (FJ.ready === null) FJ.ready = performance.now();
      document.body.setAttribute("data-ready", "1");
    });
  }

  // ------------------------------------------------------------------ person page
  function personView(view, pos) {
    return card(pos).then(function (c) {
      if (!c) { view.append(el("p", {class: "note", text: "No such person."})); return; }
      return members(c).then(function (m) {
        var gone = removedFrom(c[1]);
        view.append(el("div", {class: "person-head"},
          el("a", {href: "#people", text: "← People"}),
          nameBox(c),
          el("span", {class: "conf", text: confText(c)}),
          el("span", {class: "count", text: plural(c[2], "face", "faces") + " · " + plural(c[3], "photo", "photos") +
                                             " · cluster " + c[1]}),
          c[7] ? el("span", {class: "badge", text: c[7] + " doubtful"}) : null));
        view.append(el("p", {class: "note", text: "Most doubtful first (farthest from this person's average face; " +
                                                  "flagged when a face of another person is nearer than any of this one). " +
                                                  "Click a face to see the photo."}));
        var grid = el("div", {class: "faces", id: "faces"});
        view.append(grid);
        var shown = 0, sentinel = el("div", {class: "sentinel"});
        view.append(sentinel);
        function more() {
          var frag = document.createDocumentFragment();
          m.faces.slice(shown, shown + 300).forEach(function (f) { frag.append(faceView(c, f, m, gone)); });
          shown += 300;
          grid.append(frag);
          if (shown >= m.faces.length) sentinel.remove();
        }
        more();
        observer = new IntersectionObserver(function (es) {
          if (es.some(function (e) { return e.isIntersecting; }) && shown < m.faces.length) more();
        }, {rootMargin: "800px"});
        observer.observe(sentinel);
      });
    });
  }

  function faceView(c, f, m, gone) {
    var photo = m.photos[f[1]];
    var node = el("div", {class: "face" + (f[5] ? " flagged" : "") + (gone[f[0]] ? " removed" : ""), "data-face": f[0]});
    var t = thumb(f[3], "Show the photo");
    t.addEventListener("click", function () { showFace(f, photo); });
    var btn = el("button", {type: "button", class: "not-person", text: gone[f[0]] ? "Undo" : "Not this person"});
    btn.addEventListener("click", function () {
      var out = toggleNotPerson(c, f, m);
      node.className = "face" + (f[5] ? " flagged" : "") + (out ? " removed" : "");
      btn.textContent = out ? "Undo" : "Not this person";
    });
    var who = f[6] ? (f[8] ? "named " : "") + f[6] + (f[8] ? "" : " (" + Math.round(f[7] * 100) + "%)") : "unknown";
    [t, el("span", {class: "fname", title: photo[0], text: fileName(photo[0])}),
     el("span", {class: "small", text: "distance " + fmt(f[4]) + " · " + who}),
     f[5] ? el("span", {class: "badge", text: "doubtful"}) : null, btn].forEach(function (x) { if (x) node.append(x); });
    return node;
  }

  // ------------------------------------------------------------------ photo viewer
  function showFace(f, photo) {
    var v = $("viewer"), pc = $("photo-canvas"), cc = $("chip-canvas"), info = $("viewer-info");
    info.replaceChildren();
    [["file", photo[0]], ["face", (f[2] + 1) + " of " + photo[4].length], ["face id", f[0]],
     ["name", f[6] ? f[6] + (f[8] ? " (named)" : " (" + fmt(f[7]) + ")") : "unknown"],
     ["to this person's mean", fmt(f[4], 3)], ["nearest same person", fmt(f[10], 3)],
     ["nearest other person", fmt(f[11], 3)]].forEach(function (kv) {
      info.append(el("dt", {text: kv[0]}), el("dd", {text: kv[1]}));
    });
    var pctx = pc.getContext("2d"), cctx = cc.getContext("2d");
    cctx.setTransform(1, 0, 0, 1, 0, 0);
    cctx.clearRect(0, 0, 150, 150);
    v.hidden = false;
    if (photo[1] === null) {
      pc.width = 300; pc.height = 60;
      pctx.fillStyle = "#667085"; pctx.font = "14px sans-serif";
      pctx.fillText("The photo could not be read for the report.", 10, 35);
      return;
    }
    var img = new Image();
    img.onload = function () {
      var w = photo[2] || img.naturalWidth, h = photo[3] || img.naturalHeight, s = img.naturalWidth / w;
      var zoom = Math.max(1, Math.min(2, 640 / img.naturalWidth));
      pc.width = Math.round(img.naturalWidth * zoom); pc.height = Math.round(img.naturalHeight * zoom);
      pctx.setTransform(zoom, 0, 0, zoom, 0, 0);
      pctx.drawImage(img, 0, 0);
      photo[4].forEach(function (g) {
        var mine = g[0] === f[0];
        pctx.lineWidth = (mine ? 3 : 1.5) / zoom;
        pctx.strokeStyle = mine ? "#22c55e" : "#f59e0b";
        pctx.strokeRect(g[1] * s, g[2] * s, (g[3] - g[1]) * s, (g[4] - g[2]) * s);
        pctx.fillStyle = mine ? "#22c55e" : "#f59e0b";
        for (var i = 0; i + 1 < g[5].length; i += 2) {
          pctx.beginPath(); pctx.arc(g[5][i] * s, g[5][i + 1] * s, 2 / zoom + 0.5, 0, 2 * Math.PI); pctx.fill();
        }
      });
      var chip = f[9];
      cctx.fillStyle = "#000";
      cctx.fillRect(0, 0, 150, 150);      // outside the photo, dlib's chip is black too
      if (chip) {
        // dlib's chip: chip pixel p maps to centre + rotate(angle) * scale * (p - 75) in the photo.
        cctx.setTransform(1, 0, 0, 1, 0, 0);
        cctx.translate(75, 75); cctx.rotate(-chip[3]); cctx.scale(1 / chip[2], 1 / chip[2]);
        cctx.translate(-chip[0], -chip[1]);
        cctx.drawImage(img, 0, 0, w, h);
      }
    };
    img.src = "photos/" + photo[1] + ".jpg";
  }
  function closeViewer() { $("viewer").hidden = true; }

  // ------------------------------------------------------------------ duplicates
  function dupsView(view) {
    view.append(el("h1", {text: plural(meta.duplicate_groups, "group", "groups") + " of copies"}),
                el("p", {class: "note", text: "Side by side; the kept copy has a green frame."}));
    return load("dups").then(function (groups) {
      if (!groups.length) view.append(el("p", {class: "note", text: "No duplicates found."}));
      var shown = 0, sentinel = el("div", {class: "sentinel"});
      function more() {
        var frag = document.createDocumentFragment();
        groups.slice(shown, shown + 100).forEach(function (g) {
          var row = el("div", {class: "photos"});
          g.photos.forEach(function (p) {
            var img = el("img", {loading: "lazy", alt: fileName(p[0])});
            if (p[6] !== null) img.src = "photos/" + p[6] + ".jpg";
            row.append(el("figure", {class: p[1] ? "keep" : ""}, img,
              el("figcaption", {title: p[0]},
                el("strong", {text: p[1] ? "kept: " : "copy: "}), fileName(p[0]),
                el("br"), el("span", {class: "small", text: (p[4] || "?") + "×" + (p[5] || "?") + " · " +
                                                             Math.round((p[3] || 0) / 1024) + " KB · " + p[2]}))));
          });
          frag.append(el("div", {class: "dup"}, el("div", {class: "small", text: "group " + g.group + " · " + g.kind}), row));
        });
        shown += 100;
        view.insertBefore(frag, sentinel);
        if (shown >= groups.length) sentinel.remove();
      }
      view.append(sentinel);
      more();
      observer = new IntersectionObserver(function (es) {
        if (es.some(function (e) { return e.isIntersecting; }) && shown < groups.length) more();
      }, {rootMargin: "800px"});
      observer.observe(sentinel);
    });
  }

  // ------------------------------------------------------------------ run summary
  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function barChart(rows, unit) {
    // Log scale: stage speeds differ by orders of magnitude (detect vs write).
    var w = 520, rowH = 24, left = 90, h = rows.length * rowH + 30;
    var max = Math.max.apply(null, rows.map(function (r) { return Math.log10(1 + r[1]); }).concat([1e-9]));
    var s = svg("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"});
    rows.forEach(function (r, i) {
      var y = 10 + i * rowH, len = (w - left - 130) * Math.log10(1 + r[1]) / max;
      s.append(svg("text", {x: left - 8, y: y + 15, "text-anchor": "end"}, r[0]));
      s.append(svg("rect", {x: left, y: y + 3, width: Math.max(len, 1), height: rowH - 8, fill: "#2f6fed", rx: 3}));
      s.append(svg("text", {x: left + len + 6, y: y + 15}, fmt(r[1], r[1] >= 100 ? 0 : 1) + " " + unit));
    });
    s.append(svg("text", {x: left, y: h - 4}, "log scale"));
    return s;
  }
  function histogramChart(hg) {
    var w = 520, h = 240, l = 44, b = 30, t = 10, r = 10;
    var n = hg.same.length, maxc = Math.max.apply(null, hg.same.concat(hg.other).concat([1]));
    var x0 = hg.edges[0], x1 = hg.edges[hg.edges.length - 1];
    function X(v) { return l + (w - l - r) * (v - x0) / (x1 - x0); }
    function Y(c) { return h - b - (h - b - t) * c / maxc; }
    var s = svg("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"});
    [["same", "#2f6fed"], ["other", "#ea580c"]].forEach(function (sc) {
      for (var i = 0; i < n; i++) {
        var c = hg[sc[0]][i];
        if (!c) continue;
        s.append(svg("rect", {x: X(hg.edges[i]) + 0.5, y: Y(c), width: Math.max(X(hg.edges[i + 1]) - X(hg.edges[i]) - 1, 1),
                              height: h - b - Y(c), fill: sc[1], "fill-opacity": 0.55}));
      }
    });
    s.append(svg("line", {x1: l, x2: w - r, y1: h - b, y2: h - b, stroke: "#667085"}));
    s.append(svg("line", {x1: l, x2: l, y1: t, y2: h - b, stroke: "#667085"}));
    for (var v = 0; v <= x1 + 1e-9; v += 0.2) {
      s.append(svg("text", {x: X(v), y: h - b + 16, "text-anchor": "middle"}, v.toFixed(1)));
    }
    s.append(svg("text", {x: l - 6, y: t + 10, "text-anchor": "end"}, String(maxc)));
    s.append(svg("text", {x: l - 6, y: h - b, "text-anchor": "end"}, "0"));
    if (hg.threshold) {
      s.append(svg("line", {x1: X(hg.threshold), x2: X(hg.threshold), y1: t, y2: h - b, stroke: "#111827", "stroke-dasharray": "4 3"}));
      s.append(svg("text", {x: X(hg.threshold) + 4, y: t + 12}, "threshold " + hg.threshold));
    }
    return s;
  }
  function table(head, rows) {
    var tb = el("table");
    tb.append(el("tr", null, ...head.map(function (x) { return el("th", {text: x}); })));
    rows.forEach(function (r) {
      tb.append(el("tr", null, ...r.map(function (x) {
        return el("td", {class: typeof x === "number" ? "num" : null, text: typeof x === "number" ? x.toLocaleString() : String(x)});
      })));
    });
    return tb;
  }
  function summaryView(view) {
    var s = meta.summary, lr = s.last_run || {}, c = s.cluster || {};
    view.append(el("h1", {text: "Run summary"}),
      el("p", {class: "note", text: "Output " + meta.out + " · report built " + meta.created +
                                    (lr.finished ? " · last index run finished " + lr.finished : "")}));
    view.append(el("h2", {text: "Counts"}), table(["what", "count"], [
      ["photos", s.images], ["with faces", s.status.ok || 0], ["without faces", s.status.no_face || 0],
      ["errors", s.status.error || 0], ["faces", s.faces], ["people (clusters)", meta.people],
      ["single-face clusters", c.singletons === undefined || c.singletons === null ? "–" : c.singletons],
      ["groups of duplicates", meta.duplicate_groups], ["photos unreadable for this report", meta.unreadable],
      ["corrections stored in the output", meta.corrections_stored]]));
    if (lr.counts) {
      view.append(el("h2", {text: "Last index run"}), table(["what", "count"],
        Object.keys(lr.counts).map(function (k) { return [k, lr.counts[k]]; })));
    }
    view.append(el("h2", {text: "Errors by reason"}));
    if (!s.errors_total) view.append(el("p", {class: "note", text: "No errors."}));
    else {
      view.append(table(["reason", "photos"], Object.keys(s.errors_by_reason).map(function (k) { return [k, s.errors_by_reason[k]]; })));
      view.append(el("h2", {text: "Photos with errors" + (s.errors_total > s.errors.length ? " (first " + s.errors.length + " of " + s.errors_total + ")" : "")}),
                  table(["photo", "error"], s.errors));
    }
    view.append(el("h2", {text: "Plots"}));
    var plots = el("div", {class: "plots"});
    if (s.throughput.length) {
      plots.append(el("div", {class: "plot"}, el("div", {class: "legend", text: "Throughput per stage (photos per worker-second)"}),
                      barChart(s.throughput.map(function (r) { return [r[0], r[1]]; }), "photos/s")));
    }
    plots.append(el("div", {class: "plot"},
      el("div", {class: "legend", text: "Distance to the nearest face: same person (blue) vs nearest other person (orange)"}),
      histogramChart(meta.histogram)));
    view.append(plots);
    var tm = Object.keys(s.timings).map(function (k) { return ["index " + k, s.timings[k]]; });
    if (c.timings) Object.keys(c.timings).forEach(function (k) { tm.push(["cluster " + k, c.timings[k]]); });
    Object.keys(meta.report_timings).forEach(function (k) { tm.push(["report " + k, meta.report_timings[k]]); });
    view.append(el("h2", {text: "Timings (seconds)"}), table(["step", "s"], tm));
    if (s.history.length) {
      view.append(el("h2", {text: "Earlier runs"}), table(["started", "photos processed", "total s"],
        s.history.map(function (h) { return [h.started || "–", h.processed === null ? "–" : h.processed, h.total_s === null ? "–" : fmt(h.total_s, 1)]; })));
    }
  }

  // ------------------------------------------------------------------ search
  var searchTimer = null;
  function search(q) {
    var list = $("results");
    q = q.trim().toLowerCase();
    if (!q) { list.hidden = true; list.replaceChildren(); return; }
    load("search").then(function (ix) {
      var hits = [];
      for (var i = 0; i < ix.names.length && hits.length < 20; i++) {
        if (ix.names[i][1].toLowerCase().indexOf(q) >= 0) hits.push(["person", ix.names[i][1], ix.names[i][0]]);
      }
      for (var j = 0; j < ix.files.length && hits.length < 50; j++) {
        if (ix.files[j][0].toLowerCase().indexOf(q) >= 0) hits.push(["file", ix.files[j][0], ix.files[j][1]]);
      }
      list.replaceChildren();
      if (!hits.length) list.append(el("li", {class: "none", text: "Nothing found"}));
      hits.forEach(function (h) {
        var li = el("li", {"data-pos": String(h[2])}, el("span", {text: h[1]}), el("span", {class: "kind", text: h[0]}));
        li.addEventListener("mousedown", function (ev) { ev.preventDefault(); go(h[2]); });
        list.append(li);
      });
      list.hidden = false;
    });
  }
  function go(pos) { $("results").hidden = true; location.hash = "#person/" + pos; }

  // ------------------------------------------------------------------ routing
  function route() {
    if (observer) { observer.disconnect(); observer = null; }
    closeViewer();
    var view = $("view");
    view.replaceChildren();
    var h = location.hash.replace(/^#/, "") || "people";
    var name = h.split("/")[0];
    document.querySelectorAll("nav a").forEach(function (a) {
      a.className = a.getAttribute("data-view") === (name === "person" ? "people" : name) ? "active" : "";
    });
    window.scrollTo(0, 0);
    var done;
    if (name === "person") done = personView(view, parseInt(h.split("/")[1], 10) || 0);
    else if (name === "dups") done = dupsView(view);
    else if (name === "summary") done = Promise.resolve(summaryView(view));
    else done = peopleView(view);
    done.catch(function (e) { view.append(el("p", {class: "note", text: "Could not load this page: " + e.message})); });
  }

  function start(m) {
    meta = m;
    restore();
    bar();
    $("download").addEventListener("click", download);
    $("clear").addEventListener("click", function () {
      if (confirm("Forget the corrections made on this page (not yet downloaded ones are lost)?")) { corrections = []; save(); route(); }
    });
    $("same").addEventListener("click", samePerson);
    $("viewer-close").addEventListener("click", closeViewer);
    $("viewer").addEventListener("click", function (ev) { if (ev.target === $("viewer")) closeViewer(); });
    document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") closeViewer(); });
    var input = $("search");
    input.addEventListener("input", function () {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () { search(input.value); }, 120);
    });
    input.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { var li = $("results").querySelector("li[data-pos]"); if (li) go(parseInt(li.getAttribute("data-pos"), 10)); }
    });
    input.addEventListener("blur", function () { setTimeout(function () { $("results").hidden = true; }, 150); });
    window.addEventListener("hashchange", route);
    route();
  }
})();
