// stallscope report.html: wires the recording's data (the JSON element above) to d3 and
// d3-flame-graph. Every string from the recording is written with textContent or d3's .text(),
// never as markup: names come from the profiled program and are hostile input.
(function () {
  'use strict';

  var data = JSON.parse(document.getElementById('stallscope-data').textContent);
  var byId = new Map();
  data.stalls.forEach(function (s) { byId.set(s.id, s); });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function ms(ns) {
    var v = ns / 1e6;
    return v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(1) + ' ms';
  }
  function seconds(us) { return '+' + (us / 1e6).toFixed(3) + ' s'; }
  function threadName(s) { return s.comm + ' (' + s.pid + '/' + s.tid + ')'; }

  // ---- header -------------------------------------------------------------------------
  function header() {
    var summary = document.getElementById('summary');
    var targets = data.processes.map(function (p) { return p.comm + ' (pid ' + p.pid + ', ' + p.exe + ')'; });
    [
      'target: ' + (targets.length ? targets.slice(0, 5).join(', ') + (targets.length > 5 ? ' and ' + (targets.length - 5) + ' more' : '') : 'none'),
      'recorded ' + ms(data.recorded_ns),
      'threshold ' + ms(data.threshold_ns),
      data.stalls_total + ' stall(s)'
    ].forEach(function (t) { summary.appendChild(el('span', null, t)); });
    var verdict = document.getElementById('verdict');
    verdict.appendChild(el('div', data.passed ? 'verdict-pass' : 'verdict-fail',
      data.passed ? 'verdict: passed' + (data.budgets.length ? '' : ' (no budget set)') : 'verdict: budget exceeded'));
    data.budgets.forEach(function (b) {
      verdict.appendChild(el('div', b.passed ? null : 'verdict-fail', (b.passed ? 'pass  ' : 'FAIL  ') + b.budget + ': ' + b.text));
    });
    var notes = document.getElementById('notes');
    var lossy = data.lost_events > 0 || data.stacks_lost > 0;
    notes.appendChild(el('div', lossy ? 'warn' : null,
      'losses: ' + data.lost_events + ' events lost, ' + data.stacks_lost + ' stacks lost' +
      (data.spans_dropped ? ', ' + data.spans_dropped + ' timeline spans not shown' : '')));
    if (data.stalls_in_table < data.stalls_total) {
      notes.appendChild(el('div', 'warn', 'the table lists the ' + data.stalls_in_table + ' longest of ' +
        data.stalls_total + ' stalls; stalls.json has them all'));
    }
    if (data.stalls_with_stacks < data.stalls_in_table) {
      notes.appendChild(el('div', 'help', 'stack graphs for the ' + data.stalls_with_stacks +
        ' longest stalls (the others: flamegraph.svg and stalls.json)'));
    }
    data.hints.forEach(function (h) { notes.appendChild(el('div', 'help', 'hint: ' + h)); });
    if (window.STALLSCOPE_VENDOR_MISSING) {
      notes.appendChild(el('div', 'error', window.STALLSCOPE_VENDOR_MISSING));
    }
  }

  // ---- timeline -----------------------------------------------------------------------
  var timelineMarks = null;
  function timeline() {
    var box = document.getElementById('timeline');
    if (!window.d3) { box.appendChild(el('p', 'error', 'timeline unavailable: d3 missing')); return; }
    var stallThreads = new Set(data.stalls.map(function (s) { return s.thread; }));
    var rows = data.threads.map(function (t, i) { return { t: t, i: i }; })
      .filter(function (r) { return r.t.loop || stallThreads.has(r.i); })
      .sort(function (a, b) { return (b.t.loop - a.t.loop) || (a.t.pid - b.t.pid) || (a.t.tid - b.t.tid); })
      .slice(0, 40);
    if (!rows.length) { box.appendChild(el('p', 'help', 'no loop thread and no stall: nothing to draw')); return; }
    var rowOf = new Map(rows.map(function (r, k) { return [r.i, k]; }));
    var labelW = 260, rowH = 24, axisH = 22;
    var width = Math.max(600, box.clientWidth || 900);
    var height = rows.length * rowH + axisH + 4;
    var endMs = Math.max(1, data.recorded_ns / 1e6);
    var x = d3.scaleLinear().domain([0, endMs]).range([labelW, width - 10]);
    var svg = d3.select(box).append('svg').attr('width', width).attr('height', height);
    svg.append('clipPath').attr('id', 'plot-clip').append('rect')
      .attr('x', labelW).attr('y', 0).attr('width', width - 10 - labelW).attr('height', height);
    svg.selectAll('text.row-label').data(rows).enter().append('text').attr('class', 'row-label')
      .attr('x', 4).attr('y', function (r, k) { return k * rowH + rowH * 0.65; })
      .text(function (r) {
        var t = r.t;
        var text = t.comm + ' ' + t.tid + (t.loop ? ' · ' + t.iterations + ' iterations' : '');
        return text.length > 40 ? text.slice(0, 39) + '…' : text;
      });
    var plot = svg.append('g').attr('clip-path', 'url(#plot-clip)');
    plot.selectAll('rect.lane').data(rows).enter().append('rect').attr('class', 'lane')
      .attr('x', labelW).attr('width', width - 10 - labelW)
      .attr('y', function (r, k) { return k * rowH + 2; }).attr('height', rowH - 4);
    // Iterations (from leaving the wait point to entering it again) behind everything: one mark
    // each, or, for a thread with many, buckets whose shade is the loop's busy share in them.
    var iterations = [];
    rows.forEach(function (r) {
      (r.t.it || []).forEach(function (m) { iterations.push({ row: rowOf.get(r.i), m: m }); });
    });
    var iterSel = plot.selectAll('rect.iteration').data(iterations).enter().append('rect')
      .attr('class', function (d) { return d.m[2] > 1 ? 'iteration bucket' : 'iteration'; })
      .attr('y', function (d) { return d.row * rowH + 3; })
      .attr('height', rowH * 0.5)
      .attr('fill-opacity', function (d) {
        return d.m[2] > 1 ? 0.25 + 0.75 * Math.min(1, d.m[3] / Math.max(1, d.m[1])) : null;
      });
    iterSel.append('title').text(function (d) {
      var m = d.m;
      return m[2] > 1
        ? m[2] + ' iterations from ' + seconds(m[0]) + ' to ' + seconds(m[0] + m[1]) + ': busy ' + ms(m[3] * 1000) + ', longest ' + ms(m[4] * 1000)
        : 'iteration ' + ms(m[1] * 1000) + ' at ' + seconds(m[0]);
    });
    var spans = data.spans.filter(function (s) { return rowOf.has(s[0]); });
    var spanSel = plot.selectAll('rect.span').data(spans).enter().append('rect')
      .attr('class', function (s) { return s[1] === 'r' ? 'runqueue' : 'blocked'; })
      .attr('y', function (s) { return rowOf.get(s[0]) * rowH + rowH * 0.55; })
      .attr('height', rowH * 0.35);
    var stalls = data.stalls.filter(function (s) { return rowOf.has(s.thread); });
    var stallSel = plot.selectAll('rect.stall').data(stalls).enter().append('rect')
      .attr('class', 'stall')
      .attr('data-stall', function (s) { return s.id; })
      .attr('y', function (s) { return rowOf.get(s.thread) * rowH + 3; })
      .attr('height', rowH * 0.5)
      .on('click', function (event, s) { select(s.id); });
    stallSel.append('title').text(function (s) { return 'stall ' + ms(s.duration_ns) + ' at ' + seconds(s.start_us) + ': ' + s.headline; });
    var axisG = svg.append('g').attr('transform', 'translate(0,' + (rows.length * rowH + 2) + ')');
    function draw(xs) {
      var px = function (us) { return xs(us / 1000); };
      // At least 2 px wide, so a stall stays visible when zoomed out.
      var w = function (start, dur) { return Math.max(2, px(start + dur) - px(start)); };
      iterSel.attr('x', function (d) { return px(d.m[0]); }).attr('width', function (d) { return Math.max(1, px(d.m[0] + d.m[1]) - px(d.m[0])); });
      spanSel.attr('x', function (s) { return px(s[2]); }).attr('width', function (s) { return Math.max(1, px(s[2] + s[3]) - px(s[2])); });
      stallSel.attr('x', function (s) { return px(s.start_us); }).attr('width', function (s) { return w(s.start_us, s.duration_ns / 1000); });
      axisG.call(d3.axisBottom(xs).ticks(Math.floor((width - labelW) / 90)).tickFormat(function (v) { return v >= 1000 ? (v / 1000) + ' s' : v + ' ms'; }));
    }
    var zoom = d3.zoom().scaleExtent([1, 1e6])
      .translateExtent([[labelW, 0], [width - 10, height]]).extent([[labelW, 0], [width - 10, height]])
      .on('zoom', function (event) { draw(event.transform.rescaleX(x)); });
    svg.call(zoom);
    draw(x);
    timelineMarks = stallSel;
  }

  // ---- table --------------------------------------------------------------------------
  var columns = [
    { key: 'start_us', title: 'start', num: true, text: function (s) { return seconds(s.start_us); } },
    { key: 'duration_ns', title: 'duration', num: true, text: function (s) { return ms(s.duration_ns) + (s.caveat ? ' *' : ''); } },
    { key: 'comm', title: 'thread', text: threadName },
    { key: 'on_cpu_ns', title: 'on-CPU', num: true, text: function (s) { return ms(s.on_cpu_ns); } },
    { key: 'blocked_ns', title: 'blocked', num: true, text: function (s) { return ms(s.blocked_ns); } },
    { key: 'runqueue_ns', title: 'runqueue', num: true, text: function (s) { return ms(s.runqueue_ns); } },
    { key: 'lock_ns', title: 'lock', num: true, text: function (s) { return ms(s.lock_ns); } },
    { key: 'headline', title: 'where', cls: 'where', text: function (s) { return s.headline; } }
  ];
  var sortKey = 'duration_ns', sortDesc = true, rowsById = new Map();
  function table() {
    var thead = document.querySelector('#stalls thead');
    var tr = el('tr');
    columns.forEach(function (c) {
      var th = el('th', null, c.title);
      th.dataset.key = c.key;
      th.addEventListener('click', function () {
        if (sortKey === c.key) sortDesc = !sortDesc; else { sortKey = c.key; sortDesc = !!c.num; }
        fillTable();
      });
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    var tbody = document.querySelector('#stalls tbody');
    data.stalls.forEach(function (s) {
      var row = el('tr', 'stall-row');
      row.dataset.stall = s.id;
      columns.forEach(function (c) {
        row.appendChild(el('td', c.num ? 'num' : (c.cls || null), c.text(s)));
      });
      row.addEventListener('click', function () { select(s.id); });
      rowsById.set(s.id, row);
      tbody.appendChild(row);
    });
    if (!data.stalls.length) {
      document.getElementById('table-note').appendChild(el('p', 'help', 'no stall longer than ' + ms(data.threshold_ns)));
    } else if (data.stalls.some(function (s) { return s.caveat; })) {
      document.getElementById('table-note').appendChild(el('p', 'help', '* partial or with lost events: see the stall for why'));
    }
    fillTable();
  }
  function fillTable() {
    var sorted = data.stalls.slice().sort(function (a, b) {
      var x = a[sortKey], y = b[sortKey];
      var c = typeof x === 'string' ? x.localeCompare(y) : x - y;
      return sortDesc ? -c : c;
    });
    var tbody = document.querySelector('#stalls tbody');
    sorted.forEach(function (s) { tbody.appendChild(rowsById.get(s.id)); });
    document.querySelectorAll('#stalls th').forEach(function (th) {
      th.className = th.dataset.key === sortKey ? (sortDesc ? 'sorted-desc' : 'sorted-asc') : '';
    });
  }

  // ---- one stall ----------------------------------------------------------------------
  var chart = null, selected = null;
  var kindColors = { p: '#6fbf73', n: '#f0a04b', k: '#a0a8b8', j: '#4db6ac', on: '#e4572e', b: '#5b9bd5', r: '#ffb74d', l: '#b39ddb' };
  function select(id) {
    var s = byId.get(id);
    if (!s) return;
    selected = s;
    rowsById.forEach(function (row, rid) { row.classList.toggle('selected', rid === id); });
    if (timelineMarks) timelineMarks.classed('selected', function (m) { return m.id === id; });
    document.getElementById('detail-title').textContent =
      'stall ' + ms(s.duration_ns) + ' on ' + threadName(s) + ' at ' + seconds(s.start_us) + (s.caveat ? ' ' + s.caveat : '');
    breakdown(s);
    var causes = document.getElementById('causes');
    causes.textContent = '';
    s.causes.forEach(function (c) {
      var what = c.kind === 'lock' ? 'waiting for a lock' + (c.by ? ', released by ' + c.by : '')
        : c.kind === 'runqueue' ? 'waiting for a CPU (runnable, not running)'
          : 'blocked' + (c.syscall ? ' in ' + c.syscall + '()' : '') + (c.by ? ', woken by ' + c.by : '');
      causes.appendChild(el('li', null, ms(c.ns) + '  ' + what));
    });
    document.getElementById('task').textContent = s.task ? 'asyncio task: ' + s.task : '';
    flame(s);
  }
  function breakdown(s) {
    var box = document.getElementById('breakdown');
    box.textContent = '';
    var parts = [['on', 'on-CPU', s.on_cpu_ns], ['b', 'blocked', s.blocked_ns], ['r', 'runqueue', s.runqueue_ns], ['l', 'lock', s.lock_ns]];
    var total = parts.reduce(function (a, p) { return a + p[2]; }, 0) || 1;
    var bar = el('div', 'bar');
    var legend = el('div', 'legend');
    parts.forEach(function (p) {
      if (p[2] > 0) {
        var seg = el('div', 'k-' + p[0]);
        seg.style.width = (100 * p[2] / total) + '%';
        seg.title = p[1] + ' ' + ms(p[2]);
        bar.appendChild(seg);
      }
      var item = el('span', null);
      item.appendChild(el('i', 'k-' + p[0]));
      item.appendChild(document.createTextNode(p[1] + ' ' + ms(p[2]) + ' (' + Math.round(100 * p[2] / total) + ' %)'));
      legend.appendChild(item);
    });
    box.appendChild(bar);
    box.appendChild(legend);
  }
  function flame(s) {
    var box = document.getElementById('flame');
    var details = document.getElementById('flame-details');
    if (chart && chart.destroy) chart.destroy();
    chart = null;
    box.textContent = '';
    if (!s.tree) {
      details.textContent = 'no stack graph for this stall (only the ' + data.stalls_with_stacks + ' longest have one): see flamegraph.svg and stalls.json';
      return;
    }
    if (!window.flamegraph || !window.d3) {
      details.textContent = 'stack graph unavailable: the chart library is missing';
      return;
    }
    details.textContent = 'outermost frame at the top; click a frame to zoom, hover for its time';
    chart = flamegraph.default()
      .width(Math.max(600, box.clientWidth || 900))
      .cellHeight(18)
      .inverted(true)
      .sort(true)
      .minFrameSize(1)
      .transitionDuration(0)
      .setDetailsElement(details)
      .setSearchHandler(function (results, sum, total) {
        details.textContent = 'search: ' + results.length + ' frame(s), ' + ms(sum) + ' of ' + ms(total) + ' (' + (100 * sum / (total || 1)).toFixed(1) + ' %)';
      })
      .setLabelHandler(function (d) {
        return d.data.n + ': ' + ms(d.value) + ' (' + (100 * (d.x1 - d.x0)).toFixed(1) + ' % of the stall)';
      })
      .setColorMapper(function (d) { return d.highlight ? '#e600e6' : (kindColors[d.data.k] || '#ccc'); })
      // Plain substring search: what a person types is not a regular expression.
      .setSearchMatch(function (d, term) { return !!term && d.data.n.toLowerCase().indexOf(term.toLowerCase()) >= 0; });
    d3.select(box).datum(s.tree).call(chart);
    var term = document.getElementById('search').value.trim();
    if (term) chart.search(term);
  }

  // ---- search -------------------------------------------------------------------------
  function treeHas(node, term) {
    if (!node) return false;
    if (node.n.toLowerCase().indexOf(term) >= 0) return true;
    return (node.c || []).some(function (c) { return treeHas(c, term); });
  }
  function search() {
    var term = document.getElementById('search').value.trim().toLowerCase();
    var shown = 0;
    data.stalls.forEach(function (s) {
      var hit = !term || s.headline.toLowerCase().indexOf(term) >= 0 || treeHas(s.tree, term);
      rowsById.get(s.id).classList.toggle('hidden', !hit);
      if (hit) shown++;
    });
    document.getElementById('search-result').textContent = term ? shown + ' of ' + data.stalls.length + ' stalls have a frame matching' : '';
    if (chart) { if (term) chart.search(term); else chart.clear(); }
  }

  header();
  timeline();
  table();
  document.getElementById('search').addEventListener('input', search);
  var longest = data.stalls.slice().sort(function (a, b) { return b.duration_ns - a.duration_ns; })[0];
  if (longest) select(longest.id);
  document.body.dataset.ready = 'true';
})();
