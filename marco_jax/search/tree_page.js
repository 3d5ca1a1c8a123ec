// A search tree (TreeRecord JSON) drawn as an SVG picture, and a node's panel: shared by the
// server's page and the pages scripts/show_tree.py writes. No dependencies; everything is
// walked without recursion (trees thousands of nodes deep).
"use strict";

// The expand/collapse buttons of the tree's text list.
function setOpen(selector, open) {
  document.querySelectorAll(selector).forEach(function (d) { d.open = open; });
}
function bestOnly() {
  setOpen("details.node", false);
  setOpen("details.node.best", true);
}

var MarcoTree = (function () {
  var X_GAP = 36, Y_GAP = 60, R_MIN = 4, R_MAX = 15, PAD = 22;

  function esc(text) {
    return String(text).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c];
    });
  }
  function fmt(v) { return v === null || v === undefined ? "-" : Number(v).toFixed(3); }

  // Red (lowest value in this tree) through amber to green (highest); grey: unvisited.
  function colour(value, lo, hi) {
    if (value === null || value === undefined) return "#d0d7de";
    var t = hi > lo ? (value - lo) / (hi - lo) : 1;
    return "hsl(" + Math.round(130 * t) + ", 65%, 42%)";
  }

  // Children most visited first (as the text list), a tidy top-down layout: leaves side by
  // side in that order, every parent centred over its first and last child.
  function layout(tree) {
    var byId = new Map(), kids = new Map(), roots = [];
    tree.nodes.forEach(function (n) { byId.set(n.id, n); kids.set(n.id, []); });
    tree.nodes.forEach(function (n) {
      if (kids.has(n.parent)) kids.get(n.parent).push(n.id); else roots.push(n.id);
    });
    kids.forEach(function (list) {
      list.sort(function (a, b) { return (byId.get(b).visits - byId.get(a).visits) || a - b; });
    });
    var x = new Map(), depth = new Map(), reflected = new Set(), next = 0, maxDepth = 0;
    var stack = roots.slice().reverse().map(function (id) { return [id, false]; });
    roots.forEach(function (id) { depth.set(id, 0); });
    while (stack.length) {
      var top = stack.pop(), id = top[0], list = kids.get(id);
      if (!top[1]) {
        var node = byId.get(id);
        if (node.kind === "reflection" || reflected.has(node.parent)) reflected.add(id);
        maxDepth = Math.max(maxDepth, depth.get(id));
        stack.push([id, true]);
        for (var i = list.length - 1; i >= 0; i--) {
          depth.set(list[i], depth.get(id) + 1);
          stack.push([list[i], false]);
        }
      } else {
        x.set(id, list.length ? (x.get(list[0]) + x.get(list[list.length - 1])) / 2 : next++);
      }
    }
    return {byId: byId, x: x, depth: depth, reflected: reflected,
            width: Math.max(next, 1), maxDepth: maxDepth};
  }

  function legend(lo, hi) {
    return '<div class="tree-legend">' +
      '<span class="scale"><span class="lo">value ' + fmt(lo) + '</span>' +
      '<span class="bar"></span><span class="hi">' + fmt(hi) + '</span></span>' +
      '<span><svg width="14" height="14"><circle cx="7" cy="7" r="5" fill="#d0d7de"/></svg>' +
      ' unvisited</span>' +
      '<span><svg width="14" height="14"><circle cx="7" cy="7" r="6" fill="none" stroke="#555"/>' +
      '<circle cx="7" cy="7" r="2" fill="#555"/></svg> size: visits</span>' +
      '<span><svg width="14" height="14"><path d="M7 1L13 7L7 13L1 7Z" fill="#8250df"/></svg>' +
      ' reflection (dashed: its branch)</span>' +
      '<span><svg width="14" height="14"><rect x="2" y="2" width="10" height="10" fill="#888"/>' +
      '</svg> terminal</span>' +
      '<span><svg width="22" height="14"><path d="M1 7H21" stroke="#0969da" stroke-width="4"/>' +
      '</svg> best path</span>' +
      '<span><b class="verdict-correct">✓</b>/<b class="verdict-wrong">✗</b> verified answer</span>' +
      '</div>';
  }

  function shape(node, r, fill) {
    if (node.kind === "reflection") {
      var d = r * 1.3;
      return '<path class="dot" d="M0 ' + -d + "L" + d + " 0L0 " + d + "L" + -d + ' 0Z" fill="' + fill + '"/>';
    }
    if (node.terminal) {
      return '<rect class="dot" x="' + -r + '" y="' + -r + '" width="' + 2 * r + '" height="' + 2 * r +
             '" fill="' + fill + '"/>';
    }
    return '<circle class="dot" r="' + r + '" fill="' + fill + '"/>';
  }

  // The picture's SVG markup: edges first, then one <g class="tree-node"> per node.
  function svg(tree, place) {
    var best = new Set(tree.best_path || []);
    var values = tree.nodes.map(function (n) { return n.value; })
      .filter(function (v) { return v !== null && v !== undefined; });
    var lo = values.length ? Math.min.apply(null, values) : 0;
    var hi = values.length ? Math.max.apply(null, values) : 1;
    var most = Math.max.apply(null, tree.nodes.map(function (n) { return n.visits; }).concat([1]));
    var px = function (id) { return PAD + R_MAX + place.x.get(id) * X_GAP; };
    var py = function (id) { return PAD + R_MAX + place.depth.get(id) * Y_GAP; };
    var width = 2 * (PAD + R_MAX) + (place.width - 1) * X_GAP;
    var height = 2 * (PAD + R_MAX) + place.maxDepth * Y_GAP;
    var edges = [], nodes = [];
    tree.nodes.forEach(function (n) {
      var x = px(n.id), y = py(n.id);
      if (place.byId.has(n.parent)) {
        var x0 = px(n.parent), y0 = py(n.parent), ym = (y0 + y) / 2;
        var cls = "edge" + (best.has(n.id) && best.has(n.parent) ? " best" : "") +
                  (place.reflected.has(n.id) ? " reflection-branch" : "");
        edges.push('<path class="' + cls + '" d="M' + x0 + " " + y0 + "C" + x0 + " " + ym + " " +
                   x + " " + ym + " " + x + " " + y + '"/>');
      }
      var r = R_MIN + (R_MAX - R_MIN) * Math.sqrt(n.visits / most);
      var cls = "tree-node kind-" + String(n.kind).replace(/[^A-Za-z0-9_-]/g, "") +
                (best.has(n.id) ? " best" : "") +
                (place.reflected.has(n.id) ? " reflection-branch" : "");
      var label = "#" + n.id + " " + n.kind + " · visits " + n.visits + " · value " + fmt(n.value) +
                  (n.correct === true ? " · correct" : n.correct === false ? " · wrong" : "");
      var mark = n.correct === true ? '<text class="verdict-correct" x="' + (r + 2) + '" y="4">✓</text>'
               : n.correct === false ? '<text class="verdict-wrong" x="' + (r + 2) + '" y="4">✗</text>'
               : "";
      nodes.push('<g class="' + cls + '" data-id="' + n.id + '" transform="translate(' + x + " " +
                 y + ')" tabindex="0" role="button" aria-label="' + esc(label) + '"><title>' +
                 esc(label + "\n" + n.text.slice(0, 200)) + "</title>" +
                 shape(n, r, colour(n.value, lo, hi)) + mark + "</g>");
    });
    return legend(lo, hi) + '<div class="tree-scroll"><svg class="tree-svg" width="' + width +
           '" height="' + height + '" viewBox="0 0 ' + width + " " + height + '">' +
           edges.join("") + nodes.join("") + "</svg></div>";
  }

  function field(parent, tag, className, text) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    el.textContent = text;
    parent.appendChild(el);
    return el;
  }

  // Each token of a node as the model scored it: its text tinted by its confidence (hover:
  // the top alternatives), then a table of the confidence and the top-5 per token.
  function showTokens(box, tokens) {
    var shown = function (text) { return text.replace(/\n/g, "\u21b5").replace(/ /g, "\u00b7"); };
    var pct = function (lp) { return (100 * Math.exp(lp)).toFixed(1) + "%"; };
    field(box, "h3", "", "Tokens (" + tokens.length + "), tinted by confidence");
    var heat = field(box, "pre", "token-heat", "");
    heat.id = "node-tokens";
    var table = document.createElement("table");
    table.className = "token-table";
    table.innerHTML = "<thead><tr><th>#</th><th>token</th><th>conf.</th>" +
                      "<th>top alternatives (probability)</th></tr></thead>";
    var body = document.createElement("tbody");
    tokens.forEach(function (t, i) {
      var top = t.top.map(function (alt) {
        var text = esc(shown(alt[0])) + " " + pct(alt[1]);
        return alt[0] === t.text ? "<b>" + text + "</b>" : text;
      });
      var span = field(heat, "span", "token", t.text);
      span.style.background = "hsla(" + Math.round(130 * t.confidence) + ", 70%, 50%, 0.3)";
      span.title = "confidence " + fmt(t.confidence) + "\n" + t.top.map(function (alt) {
        return shown(alt[0]) + "  " + pct(alt[1]);
      }).join("\n");
      var row = document.createElement("tr");
      row.innerHTML = "<td>" + i + "</td><td><code>" + esc(shown(t.text)) + "</code></td><td>" +
                      fmt(t.confidence) + "</td><td>" + top.join(" · ") + "</td>";
      body.appendChild(row);
    });
    table.appendChild(body);
    var fold = field(box, "details", "fold token-fold", "");
    field(fold, "summary", "", "confidence and top-5 at each token");
    fold.open = true;
    fold.appendChild(table);
  }

  // A node's panel: kind, statistics, its text and the rollout that valued it, and (when
  // the record has them, or ``loadTokens(node)`` fetches them) its tokens' scores.
  function showNode(panel, node, loadTokens) {
    panel.innerHTML = "";
    field(panel, "h2", "", "Node " + node.id + " (" + node.kind + ")");
    field(panel, "p", "stats", "visits " + node.visits + " · value " + fmt(node.value) +
          " · confidence of its rollout " + fmt(node.rollout_value) + " · depth " + node.depth +
          (node.terminal ? " · terminal (" + node.finish + ")" : "") +
          (node.correct === true ? " · correct" : node.correct === false ? " · wrong" : ""));
    field(panel, "pre", "", node.text).id = "node-text";
    var tokensBox = field(panel, "div", "node-tokens-box", "");  // filled now or once fetched
    if (node.rollout_text) {
      field(panel, "h3", "", "Rollout (confidence " + fmt(node.rollout_value) + ")");
      field(panel, "pre", "", node.rollout_text).id = "node-rollout";
    }
    var shown = panel.shown = {};  // a later showNode makes this fetch's answer stale
    if (node.tokens) {
      showTokens(tokensBox, node.tokens);
    } else if (loadTokens && node.kind !== "root") {
      loadTokens(node).then(function (tokens) {
        if (tokens && panel.shown === shown) showTokens(tokensBox, tokens);
      });
    }
  }

  // Draw the tree of a .tree-view (its JSON is in the view's script.tree-data) and show a
  // clicked node (or the text list's summary) in the panel; ``loadTokens(node)``, if given,
  // is a promise of the node's token scores. Returns the tree and select(id).
  function mount(view, panel, selected, loadTokens) {
    var tree = JSON.parse(view.querySelector("script.tree-data").textContent);
    var place = layout(tree);
    var picture = view.querySelector(".tree-picture");
    picture.innerHTML = svg(tree, place);
    function select(id) {
      var node = place.byId.get(Number(id));
      if (!node) return;
      document.querySelectorAll(".tree-node.selected, details.node.picked").forEach(function (el) {
        el.classList.remove("selected", "picked");
      });
      var g = picture.querySelector('.tree-node[data-id="' + node.id + '"]');
      if (g) g.classList.add("selected");
      var item = document.querySelector('details.node[data-id="' + node.id + '"]');
      if (item) item.classList.add("picked");
      showNode(panel, node, loadTokens);
      selected = node.id;
    }
    picture.addEventListener("click", function (event) {
      var g = event.target.closest(".tree-node");
      if (g) select(g.dataset.id);
    });
    picture.addEventListener("keydown", function (event) {
      var g = event.target.closest(".tree-node");
      if (g && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); select(g.dataset.id); }
    });
    var list = view.parentElement.querySelector("details.tree-list");
    if (list) list.addEventListener("click", function (event) {
      var summary = event.target.closest("details.node > summary");
      if (summary) select(summary.parentElement.dataset.id);
    });
    if (selected !== null && selected !== undefined) select(selected);
    return {tree: tree, byId: place.byId, select: select,
            selected: function () { return selected; }};
  }

  return {mount: mount};
})();
