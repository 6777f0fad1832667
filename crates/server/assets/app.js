// ringcast chat page. Talks the JSON chat protocol on /chat of the same origin.
// Every piece of text from the network or the user goes into the DOM through
// textContent only, so `<img src=x onerror=...>` is shown, never parsed.
'use strict';
(function () {
  var BACKOFF_BASE_MS = 250;
  var BACKOFF_CAP_MS = 10000;
  var MAX_LOG_ENTRIES = 500;

  function $(id) { return document.getElementById(id); }
  var ui = {
    status: $('status'),
    joinView: $('join-view'),
    joinForm: $('join-form'),
    name: $('name'),
    room: $('room'),
    joinError: $('join-error'),
    chatView: $('chat-view'),
    roomName: $('room-name'),
    members: $('members'),
    leave: $('leave'),
    error: $('error'),
    log: $('log'),
    sendForm: $('send-form'),
    text: $('text'),
    send: $('send')
  };

  var st = {
    ws: null,
    open: false,
    name: '',
    room: '',          // the room we want to be in ('' = none)
    joinPending: false, // join sent, our own join notice not seen yet
    joinedOnce: false,  // had joined this room before (a later join is a rejoin)
    attempt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    retryAt: 0,
    errorTimer: 0,
    lostNoticeShown: false
  };

  // ---- connection state -------------------------------------------------

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
    document.body.dataset.connection = state;
  }

  function chatURL() {
    var proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return proto + '//' + location.host + '/chat';
  }

  function connect() {
    clearTimeout(st.retryTimer);
    clearInterval(st.countdownTimer);
    st.retryTimer = 0;
    setStatus(st.attempt === 0 ? 'connecting' : 'reconnecting',
      st.attempt === 0 ? 'connecting…' : 'reconnecting…');
    var ws;
    try {
      ws = new WebSocket(chatURL());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    st.ws = ws;
    ws.onopen = function () {
      if (st.ws !== ws) return;
      st.open = true;
      st.attempt = 0;
      setStatus('connected', 'connected');
      if (st.room) sendJoin();
      updateComposer();
    };
    ws.onmessage = function (ev) {
      if (st.ws !== ws) return;
      onServerMessage(ev.data);
    };
    ws.onclose = function () {
      if (st.ws !== ws) return;
      st.ws = null;
      st.open = false;
      st.joinPending = false;
      if (st.room && !st.lostNoticeShown) {
        notice('system', 'Connection lost. Reconnecting…');
        st.lostNoticeShown = true;
      }
      updateComposer();
      scheduleReconnect();
    };
    // An error is always followed by close, which does the work.
    ws.onerror = function () {};
  }

  // Exponential backoff with "equal jitter": the n-th retry in a row waits
  // between half and all of min(cap, base * 2^n), so a server restart doesn't
  // get every client back at one instant, and no retry is immediate.
  function backoffDelay(attempt, random) {
    var step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    return step / 2 + random * (step / 2);
  }

  function scheduleReconnect() {
    var delay = backoffDelay(st.attempt, Math.random());
    // Exposed for the browser tests (and curious humans in devtools).
    document.body.dataset.retryAttempt = String(st.attempt);
    document.body.dataset.retryDelay = String(Math.round(delay));
    st.attempt = Math.min(st.attempt + 1, 30);
    st.retryAt = Date.now() + delay;
    clearTimeout(st.retryTimer);
    clearInterval(st.countdownTimer);
    st.retryTimer = setTimeout(connect, delay);
    showCountdown();
    st.countdownTimer = setInterval(showCountdown, 1000);
  }

  function showCountdown() {
    var secs = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
    setStatus('reconnecting', secs > 0 ? 'reconnecting in ' + secs + ' s…' : 'reconnecting…');
  }

  // Network back or tab visible again: don't sit out a long backoff.
  function retrySoon() {
    if (!st.ws && st.retryTimer) {
      st.attempt = 0;
      connect();
    }
  }
  window.addEventListener('online', retrySoon);
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible') retrySoon();
  });

  function send(obj) {
    if (!st.ws || !st.open) return false;
    st.ws.send(JSON.stringify(obj));
    return true;
  }

  function sendJoin() {
    st.joinPending = send({ type: 'join', room: st.room, name: st.name });
  }

  // ---- protocol -----------------------------------------------------------

  function onServerMessage(data) {
    var msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'join':
        if (msg.room !== st.room) return;
        setMembers(msg.members);
        if (st.joinPending && msg.name === st.name) {
          st.joinPending = false;
          notice('self', st.joinedOnce ? 'Reconnected to #' + st.room + '.' : 'You joined #' + st.room + '.');
          st.joinedOnce = true;
          st.lostNoticeShown = false;
        } else {
          notice('join', str(msg.name) + ' joined');
        }
        break;
      case 'leave':
        if (msg.room !== st.room) return;
        setMembers(msg.members);
        notice('leave', str(msg.name) + ' left');
        break;
      case 'members':
        // Cluster mode: the count changed without a join or leave here
        // (a server node went away or came back).
        if (msg.room !== st.room) return;
        setMembers(msg.members);
        break;
      case 'message':
        if (msg.room !== st.room) return;
        addMessage(msg);
        break;
      case 'error':
        onError(str(msg.error || 'error'));
        break;
      default:
        break;
    }
  }

  function onError(text) {
    if (st.joinPending) {
      // The server refused our join (bad name or room): back to the form.
      st.joinPending = false;
      st.room = '';
      st.joinedOnce = false;
      showJoinView();
      ui.joinError.textContent = text;
      ui.joinError.hidden = false;
      updateComposer();
      return;
    }
    showError(text);
    notice('error', 'Error: ' + text);
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = false;
    clearTimeout(st.errorTimer);
    st.errorTimer = setTimeout(function () { ui.error.hidden = true; }, 8000);
  }

  // ---- rendering (textContent only) ---------------------------------------

  function str(v) {
    return v === undefined || v === null ? '' : String(v);
  }

  function setMembers(n) {
    if (typeof n !== 'number' || !isFinite(n)) return;
    ui.members.dataset.count = String(n);
    ui.members.textContent = n + (n === 1 ? ' member' : ' members');
  }

  function hueOf(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) % 360;
    return h;
  }

  function timeOf(ts) {
    var d;
    if (typeof ts === 'number' && isFinite(ts)) d = new Date(ts > 1e12 ? ts : ts * 1000);
    else if (typeof ts === 'string') d = new Date(ts);
    if (!d || isNaN(d.getTime())) d = new Date();
    return d;
  }

  function atBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
  }

  function append(li) {
    var stick = atBottom();
    ui.log.appendChild(li);
    while (ui.log.childElementCount > MAX_LOG_ENTRIES) ui.log.removeChild(ui.log.firstElementChild);
    if (stick) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function addMessage(msg) {
    var name = str(msg.name);
    var li = document.createElement('li');
    li.className = 'msg' + (name === st.name ? ' mine' : '');
    li.dataset.kind = 'message';
    li.setAttribute('data-testid', 'message');
    if (msg.seq !== undefined) li.dataset.seq = str(msg.seq);

    var who = document.createElement('span');
    who.className = 'who';
    who.textContent = name;
    who.style.setProperty('--hue', String(hueOf(name)));

    var text = document.createElement('span');
    text.className = 'text';
    text.textContent = str(msg.text);

    var d = timeOf(msg.ts);
    var time = document.createElement('time');
    time.dateTime = d.toISOString();
    time.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

    li.appendChild(who);
    li.appendChild(text);
    li.appendChild(time);
    append(li);
  }

  function notice(kind, text) {
    var li = document.createElement('li');
    li.className = 'notice';
    li.dataset.kind = kind;
    li.setAttribute('data-testid', 'notice');
    li.textContent = text;
    append(li);
  }

  // ---- views --------------------------------------------------------------

  function showJoinView() {
    ui.chatView.hidden = true;
    ui.joinView.hidden = false;
    ui.error.hidden = true;
  }

  function showChatView() {
    ui.joinError.hidden = true;
    ui.joinView.hidden = true;
    ui.chatView.hidden = false;
    ui.roomName.textContent = st.room;
    ui.members.dataset.count = '';
    ui.members.textContent = '…';
    while (ui.log.firstChild) ui.log.removeChild(ui.log.firstChild);
    ui.text.focus();
  }

  function updateComposer() {
    var usable = st.open && st.room !== '';
    ui.send.disabled = !usable;
    ui.text.placeholder = st.open ? 'Message' : 'Waiting for connection…';
  }

  function remember(key, value) {
    try { localStorage.setItem('ringcast.' + key, value); } catch (e) { /* private mode */ }
  }
  function recall(key) {
    try { return localStorage.getItem('ringcast.' + key) || ''; } catch (e) { return ''; }
  }

  ui.joinForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = ui.name.value.trim();
    var room = ui.room.value.trim();
    if (!name || !room) {
      ui.joinError.textContent = 'Pick a name and a room.';
      ui.joinError.hidden = false;
      (name ? ui.room : ui.name).focus();
      return;
    }
    st.name = name;
    st.room = room;
    st.joinedOnce = false;
    st.lostNoticeShown = false;
    remember('name', name);
    remember('room', room);
    try { history.replaceState(null, '', '#' + encodeURIComponent(room)); } catch (e) { /* file: */ }
    showChatView();
    if (st.open) sendJoin();
    else notice('system', 'Waiting for connection…');
    updateComposer();
  });

  ui.leave.addEventListener('click', function () {
    if (st.room) send({ type: 'leave', room: st.room });
    st.room = '';
    st.joinPending = false;
    showJoinView();
    updateComposer();
    ui.room.focus();
  });

  ui.sendForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var text = ui.text.value;
    if (!text.trim() || !st.room) return;
    if (!send({ type: 'message', room: st.room, text: text })) {
      showError('Not connected: message not sent.');
      return;
    }
    ui.text.value = '';
    ui.text.focus();
  });

  // ---- start --------------------------------------------------------------

  window.ringcastChat = Object.freeze({
    backoffDelay: backoffDelay,
    BACKOFF_BASE_MS: BACKOFF_BASE_MS,
    BACKOFF_CAP_MS: BACKOFF_CAP_MS
  });

  (function init() {
    var fromHash = '';
    try { fromHash = decodeURIComponent(location.hash.slice(1)); } catch (e) { fromHash = ''; }
    ui.name.value = recall('name');
    ui.room.value = fromHash || recall('room') || 'lobby';
    (ui.name.value ? ui.room : ui.name).focus();
    updateComposer();
    connect();
  })();
})();
