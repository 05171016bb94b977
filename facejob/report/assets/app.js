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
  // A photo's folder and file name. Text with paths breaks only at spaces and after / _ - and a
  // dot that ends a word (never inside a word or a number).
  function shortPath(uri) { var p = uri.split("/"); return p.length > 1 ? p[p.length - 2] + "/" + p[p.length - 1] : uri; }
  function breakable(span, text) {
    text.split(/(?<=[\/_\-]|\.(?!\d))/).forEach(function (part, i) {
      if (i) span.append(el("wbr"));
      span.append(part);
    });
    return span;
  }
  function pathText(uri) { return breakable(el("span", {class: "path", title: uri}), shortPath(uri)); }
  function fileName(uri) { var p = uri.split("/"); return p[p.length - 1] || uri; }
  // One timestamp format everywhere: "2026-12-05 07:49 UTC" (ISO strings with any zone, or epoch seconds).
  function when(x) {
    if (x === null || x === undefined || x === "") return "–";
    var d = new Date(typeof x === "number" ? x * 1000 : x);
    if (isNaN(d)) return String(x);
    return d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }
  function plural(n, one, many) { return n.toLocaleString() + " " + (n === 1 ? one : many); }

  function thumb(cell, title) {
    var t = meta.thumb, cols = meta.sprite_cols, k = cell % meta.sprite_cells;
    var d = el("div", {class: "thumb", title: title || null});
    d.style.backgroundImage = "url(\"" + BASE + "thumbs/" + Math.floor(cell / meta.sprite_cells) + ".jpg\")";
    d.style.backgroundPosition = "-" + (k % cols) * t + "px -" + Math.floor(k / cols) * t + "px";
    return d;
  }

  // ------------------------------------------------------------------ data access
  // Card (one per person: the clusters of one name): [pos, cluster ids (largest first), faces,
  // photos, name, conf, given, flagged, thumb cells, faces file]
  function card(pos) {
    return load("people/" + Math.floor(pos / meta.people_chunk)).then(function (cards) {
      return cards[pos % meta.people_chunk];
    });
  }
  // Face: [face_id, photo, face_idx, cell, doubt, flagged, label, prob, labelled, chip, near_same, near_other, cluster_id]
  function members(c) {
    return load("faces/" + c[9]).then(function (chunk) { return {faces: chunk.persons[c[0]], photos: chunk.photos}; });
  }

  // ------------------------------------------------------------------ corrections
  var KEY = null, corrections = [], picked = {};

  function restore() {
    KEY = "facejob-corrections:" + meta.out;
    try { corrections = JSON.parse(localStorage.getItem(KEY) || "[]"); } catch (e) { corrections = []; }
    if (!Array.isArray(corrections)) corrections = [];
    // Corrections this build already contains (applied by `facejob reduce`) are no longer pending.
    var applied = {};
    (meta.corrections_applied || []).forEach(function (id) { applied[id] = true; });
    var pending = corrections.filter(function (c) { return !(c && c.id && applied[c.id]); });
    if (pending.length !== corrections.length) { corrections = pending; save(); }
  }
  function save() {
    try { localStorage.setItem(KEY, JSON.stringify(corrections)); } catch (e) { /* private mode: memory only */ }
    bar();
  }
  function now() { return new Date().toISOString().replace(/\.\d+Z$/, "Z"); }
  // Each correction gets an id: the build lists the ids it contains (see restore()).
  function newId() { return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10); }
  function has(ids, id) { return ids.indexOf(id) >= 0; }
  // Faces taken out of a person (any of its clusters) on this page.
  function removedFrom(c) {
    var out = {};
    corrections.forEach(function (x) { if (x.kind === "not_person" && has(c[1], x.cluster_id)) out[x.face_id] = true; });
    return out;
  }
  function pendingName(c) {
    var name = null;
    corrections.forEach(function (x) { if (x.kind === "name" && x.cluster_id === c[1][0]) name = x.name; });
    return name;
  }
  function shownName(c) { var p = pendingName(c); return p !== null ? p : c[4]; }
  // Joined to other cards by a "Same person" not yet applied.
  function joined(c) {
    return corrections.some(function (x) { return x.kind === "same_person" && c[1].some(function (id) { return has(x.cluster_ids, id); }); });
  }
  function faceIds(fs, gone) { return fs.map(function (f) { return f[0]; }).filter(function (f) { return !gone[f]; }); }

  function setName(c, name) {
    name = name.trim();
    if (!name || name === shownName(c)) return Promise.resolve();
    return members(c).then(function (m) {
      var gone = removedFrom(c);
      corrections = corrections.filter(function (x) { return !(x.kind === "name" && x.cluster_id === c[1][0]); });
      var entry = {id: newId(), kind: "name", name: name, cluster_id: c[1][0], face_ids: faceIds(m.faces, gone), at: now()};
      if (c[1].length > 1) entry.cluster_ids = c[1];
      corrections.push(entry);
      save();
    });
  }
  function toggleNotPerson(c, face, m) {
    var i = corrections.findIndex(function (x) { return x.kind === "not_person" && x.face_id === face[0] && x.cluster_id === face[12]; });
    if (i >= 0) { corrections.splice(i, 1); save(); return false; }
    // Kept apart from every face of the person, whichever of its clusters they are in.
    var gone = removedFrom(c);
    var entry = {id: newId(), kind: "not_person", face_id: face[0], cluster_id: face[12],
                 others: faceIds(m.faces, gone).filter(function (f) { return f !== face[0]; }), at: now()};
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
        var ids = [], groups = [];
        cms.forEach(function (x) {
          var gone = removedFrom(x[0]);
          x[0][1].forEach(function (cid) {
            var g = faceIds(x[1].faces.filter(function (f) { return f[12] === cid; }), gone);
            if (g.length) { ids.push(cid); groups.push(g); }
          });
        });
        corrections.push({id: newId(), kind: "same_person", cluster_ids: ids, face_ids: groups, at: now()});
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
    var pending = pendingName(c);
    var input = el("input", {class: "name" + (pending !== null ? " pending" : c[6] ? " given" : c[4] ? " predicted" : ""),
                             placeholder: "Name this person", "aria-label": "Name", "data-cluster": String(c[1][0])});
    input.value = shownName(c) || "";
    input.addEventListener("change", function () {
      setName(c, input.value).then(function () { input.className = "name pending"; });
    });
    input.addEventListener("keydown", function (ev) { if (ev.key === "Enter") input.blur(); });
    return input;
  }
  function confText(c) {
    if (pendingName(c) !== null) return "named here (download to apply)";
    if (c[6]) return "named by you";
    if (c[4]) return "predicted, " + Math.round(c[5] * 100) + "% sure";
    return "";
  }

  function cardView(c) {
    var thumbs = el("a", {class: "thumbs", href: "#person/" + c[0], title: "Open this person's faces"});
    c[8].forEach(function (cell) { thumbs.append(thumb(cell)); });
    var box = el("input", {type: "checkbox"});
    box.checked = !!picked[c[0]];
    var node = el("div", {"data-pos": String(c[0])});
    function mark() { node.className = "card" + (picked[c[0]] ? " picked" : "") + (joined(c) ? " joined" : ""); }
    mark();
    box.addEventListener("change", function () {
      if (box.checked) picked[c[0]] = true; else delete picked[c[0]];
      mark();
      bar();
    });
    node.append(thumbs,
      el("div", {class: "row"}, nameBox(c), el("span", {class: "conf", text: confText(c)})),
      el("div", {class: "row"},
        el("span", {class: "count", text: plural(c[2], "face", "faces") + " · " + plural(c[3], "photo", "photos") +
                                          (c[1].length > 1 ? " · " + plural(c[1].length, "cluster", "clusters") : "")}),
        c[7] ? el("span", {class: "badge", text: c[7] + " doubtful"}) : null,
        joined(c) ? el("span", {class: "badge joined", text: "same person: not yet applied"}) : null,
        el("label", {class: "pick"}, box, "select"),
        el("a", {class: "open", href: "#person/" + c[0], text: "open →"})));
    return node;
  }

  // Filters and sort live in the address (#people?sort=name&unnamed=1&doubtful=1&singles=1).
  function options(h) {
    var o = {sort: "size", unnamed: false, doubtful: false, singles: false};
    (h.split("?")[1] || "").split("&").forEach(function (kv) {
      var p = kv.split("=");
      if (p[0] === "sort" && (p[1] === "name" || p[1] === "doubtful")) o.sort = p[1];
      else if (p[0] in o && p[0] !== "sort") o[p[0]] = p[1] === "1";
    });
    return o;
  }
  function optionsHash(o) {
    var q = [];
    if (o.sort !== "size") q.push("sort=" + o.sort);
    ["unnamed", "doubtful", "singles"].forEach(function (k) { if (o[k]) q.push(k + "=1"); });
    return "#people" + (q.length ? "?" + q.join("&") : "");
  }
  // Index: per person [faces, name, doubtful faces] -> the page positions to show, in order.
  function selection(ix, o) {
    var keep = [], singles = 0;
    ix.forEach(function (r, pos) {
      if (o.unnamed && r[1] !== null) return;
      if (o.doubtful && !r[2]) return;
      if (r[0] === 1 && !o.singles) { singles++; return; }
      keep.push(pos);
    });
    if (o.sort === "name") {
      keep.sort(function (a, b) {
        var x = ix[a][1], y = ix[b][1];
        if (x === null || y === null) return (x === null) - (y === null) || a - b;
        return x.localeCompare(y) || a - b;
      });
    } else if (o.sort === "doubtful") {
      keep.sort(function (a, b) { return ix[b][2] - ix[a][2] || a - b; });
    }
    return {positions: keep, singles: singles};
  }

  function toolbar(o) {
    function set(k, v) { var n = Object.assign({}, o); n[k] = v; location.hash = optionsHash(n); }
    var sort = el("select", {id: "sort", "aria-label": "Sort"},
      el("option", {value: "size", text: "Largest first"}), el("option", {value: "name", text: "By name"}),
      el("option", {value: "doubtful", text: "Most doubtful first"}));
    sort.value = o.sort;
    sort.addEventListener("change", function () { set("sort", sort.value); });
    function check(k, text) {
      var b = el("input", {type: "checkbox", id: "f-" + k});
      b.checked = o[k];
      b.addEventListener("change", function () { set(k, b.checked); });
      return el("label", {class: "filter"}, b, text);
    }
    return el("div", {class: "toolbar"}, el("label", {class: "filter"}, "Sort ", sort),
              check("unnamed", "Unnamed only"), check("doubtful", "With doubtful faces only"),
              check("singles", "Show single-face clusters"));
  }

  function peopleView(view, h) {
    var o = options(h);
    return load("index").then(function (ix) {
      var sel = selection(ix, o), list = sel.positions;
      var clusters = meta.clusters > meta.people ? " (" + plural(meta.clusters, "cluster", "clusters") + ")" : "";
      view.append(el("h1", {text: plural(meta.people, "person", "people") + clusters + " · " +
                                    plural(meta.faces, "face", "faces") + " · " + plural(meta.photos, "photo", "photos")}),
                  el("p", {class: "note", text: "Type a name and press Enter to name a person; tick two or more " +
                                                "cards and press “Same person” to join them; open a person to take faces out. " +
                                                "Download the corrections and run: facejob reduce OUT --corrections corrections.json"}),
                  toolbar(o));
      var shown = el("p", {class: "note", id: "shown"}, "Showing " + plural(list.length, "person", "people") + " of " +
                     meta.people.toLocaleString() + ".");
      if (sel.singles) {
        var show = el("a", {href: optionsHash(Object.assign({}, o, {singles: true})), id: "show-singles", text: "show"});
        shown.append(" " + plural(sel.singles, "single-face cluster", "single-face clusters") + " hidden — ", show);
      }
      view.append(shown);
      var grid = el("div", {class: "grid", id: "people"});
      var sentinel = el("div", {class: "sentinel"});
      view.append(grid, sentinel);
      var next = 0, busy = false, BATCH = 120;
      function more() {
        if (busy || next >= list.length) return Promise.resolve();
        busy = true;
        var batch = list.slice(next, next + BATCH);
        return Promise.all(batch.map(card)).then(function (cards) {
          var frag = document.createDocumentFragment();
          cards.forEach(function (c) { frag.append(cardView(c)); });
          grid.append(frag);
          next += batch.length;
          busy = false;
          if (next >= list.length) sentinel.remove();
        });
      }
      observer = new IntersectionObserver(function (es) {
        if (es.some(function (e) { return e.isIntersecting; })) more().then(function () { observer && observer.takeRecords(); });
      }, {rootMargin: "800px"});
      observer.observe(sentinel);
      if (!list.length) view.append(el("p", {class: "note", text: "Nobody matches these filters."}));
      return more();
    }).then(function () {
      if (FJ.ready === null) FJ.ready = performance.now();
      document.body.setAttribute("data-ready", "1");
    });
  }

  // ------------------------------------------------------------------ person page
  function personView(view, pos) {
    return card(pos).then(function (c) {
      if (!c) { view.append(el("p", {class: "note", text: "No such person."})); return; }
      return members(c).then(function (m) {
        var gone = removedFrom(c);
        view.append(el("div", {class: "person-head"},
          el("a", {href: "#people", text: "← People"}),
          nameBox(c),
          el("span", {class: "conf", text: confText(c)}),
          el("span", {class: "count", text: plural(c[2], "face", "faces") + " · " + plural(c[3], "photo", "photos") +
                                             (c[1].length > 1 ? " · clusters " + c[1].join(", ") : " · cluster " + c[1][0])}),
          c[7] ? el("span", {class: "badge", text: c[7] + " doubtful"}) : null));
        view.append(el("p", {class: "note", text: "Cluster by cluster, most doubtful first (farthest from the cluster's " +
                                                  "average face; flagged when a face of another person is nearer than any " +
                                                  "of this person's). Click a face to see the photo."}));
        var grid = el("div", {class: "faces", id: "faces"});
        view.append(grid);
        var shown = 0, sentinel = el("div", {class: "sentinel"});
        view.append(sentinel);
        function more() {
          var frag = document.createDocumentFragment();
          m.faces.slice(shown, shown + 300).forEach(function (f, i) {
            var prev = shown + i ? m.faces[shown + i - 1][12] : null;
            if (c[1].length > 1 && f[12] !== prev) {
              var n = m.faces.filter(function (g) { return g[12] === f[12]; }).length;
              frag.append(el("h2", {class: "cluster-head", text: "Cluster " + f[12] + " · " + plural(n, "face", "faces")}));
            }
            frag.append(faceView(c, f, m, gone));
          });
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
    [t, el("span", {class: "fname"}, pathText(photo[0])),
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
  // A reason names the other copy by its full path: the folder and file name say enough here.
  function shortReason(text, photos) {
    photos.forEach(function (q) { text = text.split(q[0]).join(shortPath(q[0])); });
    return text;
  }
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
              el("figcaption", null,
                el("strong", {text: p[1] ? "kept: " : "copy: "}), pathText(p[0]),
                el("span", {class: "small dims", text: (p[4] || "?") + "×" + (p[5] || "?") + " · " +
                                                       Math.round((p[3] || 0) / 1024) + " KB"}),
                breakable(el("span", {class: "small reason"}), shortReason(p[2], g.photos)))));
          });
          var kind = g.kind === "identical" ? "identical files" : g.kind === "near" ? "near-duplicates (re-encoded, resized or cropped)" : g.kind;
          frag.append(el("div", {class: "dup"}, el("div", {class: "small", text: "Group " + (g.group + 1) + " · " + kind}), row));
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
    s.append(svg("text", {x: w - r, y: h - 2, "text-anchor": "end"}, "distance →"));
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
  // Plain words for run.json's counts and timings; an unknown key is shown with spaces.
  var COUNTS = {
    listed: "photos found in the sources", skipped_by_extension: "files skipped (not a photo type)",
    new: "new photos", changed: "changed photos (read again)", unchanged: "unchanged photos (not read again)",
    retried: "photos retried after an earlier error", deleted: "photos gone from the sources", processed: "photos read",
    ok: "photos with faces", no_face: "photos without faces", error: "photos that could not be read",
    faces: "faces found", shards: "work units (shards)", failed_shards: "work units that failed",
    orphan_parts_removed: "leftovers of a crashed run removed", unlisted: "photos no longer listed",
    unlisted_folders: "folders no longer listed", quarantined_parts: "damaged files set aside",
    duplicate_rows_removed: "rows written twice, removed"
  };
  var STEPS = {
    list_s: "listing the sources", plan_s: "planning the work", process_s: "reading photos and finding faces",
    total_s: "total", read_worker_s: "reading files (all workers)", decode_worker_s: "decoding photos (all workers)",
    detect_worker_s: "finding faces (all workers)", landmarks_worker_s: "finding landmarks (all workers)",
    embed_worker_s: "describing faces (all workers)", write_worker_s: "writing results (all workers)",
    knn_s: "finding near neighbours", merge_s: "joining clusters", read_s: "reading the output",
    images_s: "cutting thumbnails and previews", data_s: "writing the page data", finish_s: "writing the page",
    remove_old_s: "removing older builds"
  };
  function words(map, k) { return map[k] || k.replace(/_s$/, "").replace(/_/g, " "); }

  function summaryView(view) {
    var s = meta.summary, lr = s.last_run || {}, c = s.cluster || {};
    view.append(el("h1", {text: "Run summary"}),
      el("p", {class: "note", text: "Report built " + when(meta.created) +
                                    (lr.finished ? " · last index run finished " + when(lr.finished) : "") +
                                    (c.updated_at ? " · people last clustered " + when(c.updated_at) : "") +
                                    " · output " + meta.out}));
    // The plots first: they answer "did it work?" at a glance.
    var plots = el("div", {class: "plots"});
    plots.append(el("div", {class: "plot"},
      el("div", {class: "legend", text: "Distance to the nearest face of the same person (blue) and of anyone else " +
                                        "(orange); faces closer than the threshold are joined"}),
      histogramChart(meta.histogram)));
    if (s.throughput.length) {
      plots.append(el("div", {class: "plot"}, el("div", {class: "legend", text: "Speed of each step (photos per second of one worker)"}),
                      barChart(s.throughput.map(function (r) { return [r[0], r[1]]; }), "photos/s")));
    }
    view.append(plots);
    var tables = el("div", {class: "tables"});
    tables.append(el("section", null, el("h2", {text: "The archive"}), table(["", "count"], [
      ["photos", s.images], ["photos with faces", s.status.ok || 0], ["photos without faces", s.status.no_face || 0],
      ["photos that could not be read", s.status.error || 0], ["faces", s.faces], ["people", meta.people],
      ["clusters of faces", meta.clusters],
      ["clusters of a single face", c.singletons === undefined || c.singletons === null ? "–" : c.singletons],
      ["groups of duplicate photos", meta.duplicate_groups], ["photos this report could not read", meta.unreadable],
      ["corrections applied (stored in the output)", meta.corrections_stored]])));
    if (lr.counts) {
      tables.append(el("section", null, el("h2", {text: "Last index run" + (lr.started ? ", started " + when(lr.started) : "")}),
        table(["", "count"], Object.keys(lr.counts).map(function (k) { return [words(COUNTS, k), lr.counts[k]]; }))));
    }
    var tm = Object.keys(s.timings).map(function (k) { return ["index: " + words(STEPS, k), s.timings[k]]; });
    if (c.timings) Object.keys(c.timings).forEach(function (k) { tm.push(["clustering: " + words(STEPS, k), c.timings[k]]); });
    Object.keys(meta.report_timings).forEach(function (k) { tm.push(["this report: " + words(STEPS, k), meta.report_timings[k]]); });
    tables.append(el("section", null, el("h2", {text: "Time taken (seconds)"}), table(["step", "seconds"], tm)));
    view.append(tables);
    view.append(el("h2", {text: "Errors by reason"}));
    if (!s.errors_total) view.append(el("p", {class: "note", text: "No errors."}));
    else {
      view.append(table(["reason", "photos"], Object.keys(s.errors_by_reason).map(function (k) { return [k, s.errors_by_reason[k]]; })));
      view.append(el("h2", {text: "Photos with errors" + (s.errors_total > s.errors.length ? " (first " + s.errors.length + " of " + s.errors_total + ")" : "")}),
                  table(["photo", "error"], s.errors));
    }
    if (s.history.length) {
      view.append(el("h2", {text: "Earlier runs"}), table(["started", "photos read", "seconds"],
        s.history.map(function (h) { return [when(h.started), h.processed === null ? "–" : h.processed, h.total_s === null ? "–" : fmt(h.total_s, 1)]; })));
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
      // A photo is one hit however many faces it holds; it opens the person of its first face.
      for (var j = 0; j < ix.photos.length && hits.length < 50; j++) {
        var ph = ix.photos[j];
        if (ph[0].toLowerCase().indexOf(q) >= 0) {
          hits.push([ph[1].length > 1 ? "photo · " + ph[1].length + " people" : "photo", ph[0], ph[1][0]]);
        }
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
    var name = h.split(/[\/?]/)[0];
    document.querySelectorAll("nav a").forEach(function (a) {
      a.className = a.getAttribute("data-view") === (name === "person" ? "people" : name) ? "active" : "";
    });
    window.scrollTo(0, 0);
    var done;
    if (name === "person") done = personView(view, parseInt(h.split("/")[1], 10) || 0);
    else if (name === "dups") done = dupsView(view);
    else if (name === "summary") done = Promise.resolve(summaryView(view));
    else done = peopleView(view, h);
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
    // Hide the results a moment after the box loses focus (a click on a hit lands first), unless the
    // focus came back meanwhile: typing again right after a blur must not see its results vanish.
    input.addEventListener("blur", function () {
      setTimeout(function () { if (document.activeElement !== input) $("results").hidden = true; }, 150);
    });
    window.addEventListener("hashchange", route);
    route();
  }
})();
