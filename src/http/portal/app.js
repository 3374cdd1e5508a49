// cardgate portal: drives the proxy's JSON API from the browser.
//
// Card ceremonies run as operations: POST /op/enroll or /op/login returns an
// operation id at once, and the page polls GET /op/{id} until the operation
// ends. The session cookie is HttpOnly, so the page learns who is logged in
// only from POST /session/status and never reads the session token.
'use strict';

(function () {
  /** Milliseconds between two polls of a running card operation. */
  const POLL_INTERVAL_MS = 250;

  /**
   * Milliseconds after which the page stops following an operation. The
   * proxy's card deadline (card.confirm_timeout_s) normally ends it sooner.
   */
  const MAX_FOLLOW_MS = 10 * 60 * 1000;

  /** Maximum consecutive polls that fail to reach the proxy before the page gives up. */
  const MAX_POLL_FAILURES = 20;

  /** Milliseconds between two updates of the session countdown. */
  const COUNTDOWN_TICK_MS = 1000;

  /** Maximum number of counter values listed. Older ones drop off the list. */
  const MAX_COUNTER_VALUES_SHOWN = 20;

  const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

  const KIND_NOUN = { enroll: 'enrollment', login: 'login' };

  function element(id) {
    const found = document.getElementById(id);
    if (!found) {
      throw new Error('the page has no element #' + id);
    }
    return found;
  }

  const ui = {
    cardHealth: element('card-health'),
    status: element('status'),
    statusHeadline: element('status-headline'),
    statusDetail: element('status-detail'),

    prompt: element('card-prompt'),
    promptText: element('prompt-text'),
    stepQueued: element('step-queued'),
    stepPresence: element('step-presence'),
    stepProcessing: element('step-processing'),
    cardState: element('card-state'),
    cancelOperation: element('cancel-operation'),

    sessionPanel: element('session-panel'),
    sessionUser: element('session-user'),
    sessionLeft: element('session-left'),
    counterCall: element('counter-call'),
    logout: element('logout'),
    counterLatest: element('counter-latest'),
    counterValues: element('counter-values'),

    enrollPanel: element('enroll-panel'),
    enrollForm: element('enroll-form'),
    enrollUsername: element('enroll-username'),
    enrollDisplayName: element('enroll-display-name'),
    enrollSubmit: element('enroll-submit'),

    loginPanel: element('login-panel'),
    loginForm: element('login-form'),
    loginUsername: element('login-username'),
    loginSubmit: element('login-submit'),

    lookupForm: element('lookup-form'),
    lookupUsername: element('lookup-username'),
    enrollmentDetails: element('enrollment-details'),
    enrollmentSummary: element('enrollment-summary'),
    enrollmentFields: element('enrollment-fields'),
    enrollmentUsername: element('enrollment-username'),
    enrollmentDisplayName: element('enrollment-display-name'),
    enrollmentCreated: element('enrollment-created'),
    enrollmentUpdated: element('enrollment-updated'),
    enrollmentCredentials: element('enrollment-credentials'),
    enrollmentManage: element('enrollment-manage'),
    updateForm: element('update-form'),
    updateDisplayName: element('update-display-name'),
    deleteStart: element('delete-start'),
    deleteConfirm: element('delete-confirm'),
    deleteUsername: element('delete-username'),
    deleteConfirmed: element('delete-confirmed'),
    deleteCancelled: element('delete-cancelled'),
  };

  /** The logged-in user as the proxy last reported it, or null. */
  let session = null;

  /** The card operation this page follows, or null. */
  let operation = null;

  let countdownTimer = null;

  /** Guards against a second click while a request of the same kind runs. */
  const pending = new Set();

  // ---------------------------------------------------------------------
  // Talking to the proxy

  /**
   * Sends one request to the proxy's JSON API. Resolves to
   * `{ok: true, status, data}` or `{ok: false, status, code, details}`.
   * Status 0 means that the proxy was not reached.
   */
  async function api(method, path, body) {
    const init = {
      method: method,
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }

    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      return {
        ok: false,
        status: 0,
        code: 'network',
        details: 'the proxy could not be reached (' + error.message + ')',
      };
    }

    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }

    if (response.ok && data && data.ok === true) {
      return { ok: true, status: response.status, data: data };
    }
    if (data && typeof data.error === 'string') {
      return {
        ok: false,
        status: response.status,
        code: data.error,
        details: typeof data.details === 'string' ? data.details : '',
      };
    }
    return {
      ok: false,
      status: response.status,
      code: 'http_' + response.status,
      details: 'the proxy returned HTTP ' + response.status + ' without an error description',
    };
  }

  function sleep(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }

  /** Turns an API `details` fragment into a sentence: capital first letter, final stop. */
  function sentence(text) {
    const trimmed = String(text || '').trim();
    if (!trimmed) {
      return '';
    }
    const capitalised = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
    return /[.!?…]$/.test(capitalised) ? capitalised : capitalised + '.';
  }

  function capitalise(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // ---------------------------------------------------------------------
  // The status line (the aria-live region)

  /** Shows a message in the live region. `tone` is info, waiting, success or error. */
  function showStatus(tone, headline, detail) {
    ui.status.className = 'status tone-' + tone;
    ui.statusHeadline.textContent = headline;
    const detailText = sentence(detail);
    ui.statusDetail.textContent = detailText;
    ui.statusDetail.hidden = detailText === '';
  }

  // ---------------------------------------------------------------------
  // Card health

  async function refreshHealth() {
    const result = await api('GET', '/health');
    ui.cardHealth.classList.remove('is-down');
    if (!result.ok) {
      ui.cardHealth.textContent = 'ChromeCard: state unknown, because the health check failed.';
      return;
    }
    const card = result.data.card || {};
    if (card.state === 'connected') {
      ui.cardHealth.textContent = 'ChromeCard: connected.';
    } else if (card.state === 'busy') {
      ui.cardHealth.textContent = 'ChromeCard: connected and busy with another request.';
    } else {
      ui.cardHealth.textContent = 'ChromeCard: not connected. Enrollment and login fail until it is connected.';
      ui.cardHealth.classList.add('is-down');
    }
  }

  // ---------------------------------------------------------------------
  // Card operations: enroll and log in

  /** Returns [headline, detail] for an operation that did not succeed. */
  function describeFailure(kind, username, error) {
    const noun = KIND_NOUN[kind];
    const consequence = kind === 'enroll' ? username + ' is not enrolled' : 'you are not logged in';
    const code = error && typeof error.error === 'string' ? error.error : '';
    const details = error && typeof error.details === 'string' ? error.details : '';

    switch (code) {
      case 'card_denied':
        return [capitalise(noun) + ' declined on the ChromeCard: the person at the card did not confirm, so ' + consequence + '.', ''];
      case 'card_timeout':
        return ['Nobody confirmed on the ChromeCard in time, so ' + consequence + ". Start again and press the card's button when it asks.", details];
      case 'card_cancelled':
        return [capitalise(noun) + ' cancelled: the ChromeCard stopped waiting and ' + consequence + '.', ''];
      case 'card_not_connected':
        return ['The ChromeCard is not connected, so ' + consequence + '. Connect the card and try again.', details];
      case 'card_busy':
        return ['The ChromeCard is busy with other requests, so ' + consequence + '. Try again in a moment.', details];
      case 'network':
        return ['The proxy could not be reached, so the ' + noun + ' did not finish. Check the connection and try again.', details];
      default:
        // Input, conflict and lookup errors: the details name the cause.
        return [capitalise(noun) + ' of ' + username + ' failed.', details];
    }
  }

  function stateText(view) {
    switch (view.state) {
      case 'queued':
        if (typeof view.position === 'number') {
          return view.position === 1 ? 'queued, next for the card' : 'queued, position ' + view.position + ' for the card';
        }
        return 'queued for the card';
      case 'awaiting_card':
        return 'sent to the card';
      case 'awaiting_presence':
        return 'waiting for confirmation on the card';
      case 'processing':
        return 'the card is processing';
      case 'succeeded':
        return 'done';
      case 'failed':
        return 'failed';
      case 'cancelled':
        return 'cancelled';
      default:
        return String(view.state);
    }
  }

  /** Announces a state change of the followed operation. */
  function announceState(op, view) {
    const noun = KIND_NOUN[op.kind];
    switch (view.state) {
      case 'queued':
        showStatus('waiting', capitalise(noun) + ' of ' + op.username + ': ' + stateText(view) + '.', '');
        break;
      case 'awaiting_card':
        showStatus('waiting', capitalise(noun) + ' of ' + op.username + ' sent to the ChromeCard.', '');
        break;
      case 'awaiting_presence':
        showStatus('waiting', "Confirm on your ChromeCard: the person at the card must press its button to approve the " + noun + ' of ' + op.username + '.', '');
        break;
      case 'processing':
        showStatus('waiting', 'The ChromeCard is processing the ' + noun + ' of ' + op.username + '.', '');
        break;
      default:
        break;
    }
  }

  function renderState(op, view) {
    ui.cardState.textContent = stateText(view);

    const order = ['queued', 'awaiting_presence', 'processing'];
    const steps = [ui.stepQueued, ui.stepPresence, ui.stepProcessing];
    const current = view.state === 'awaiting_card' ? 0 : order.indexOf(view.state);
    steps.forEach(function (step, index) {
      step.classList.toggle('is-current', index === current);
      step.classList.toggle('is-done', current > index);
      if (index === current) {
        step.setAttribute('aria-current', 'step');
      } else {
        step.removeAttribute('aria-current');
      }
    });

    if (op.state !== view.state) {
      op.state = view.state;
      if (!op.cancelling) {
        announceState(op, view);
      }
    }
  }

  function openPrompt(op) {
    ui.promptText.textContent = "The person at the ChromeCard must press the card's button to confirm the " + KIND_NOUN[op.kind] + ' of ' + op.username + '.';
    ui.cancelOperation.textContent = 'Cancel';
    ui.cancelOperation.removeAttribute('aria-disabled');
    ui.prompt.hidden = false;
    ui.cancelOperation.focus();
  }

  function closePrompt() {
    ui.prompt.hidden = true;
  }

  function setOperationControls(enabled) {
    ui.enrollSubmit.disabled = !enabled;
    ui.loginSubmit.disabled = !enabled;
  }

  /** Polls the operation until it ends; returns its final view. */
  async function follow(op) {
    const deadline = Date.now() + MAX_FOLLOW_MS;
    let failures = 0;

    while (Date.now() < deadline) {
      await sleep(POLL_INTERVAL_MS);
      const polled = await api('GET', '/op/' + encodeURIComponent(op.id));

      if (!polled.ok) {
        failures += 1;
        if (polled.status === 0 && failures < MAX_POLL_FAILURES) {
          continue;
        }
        return { state: 'lost', error: { error: polled.code, details: polled.details } };
      }
      failures = 0;

      const view = polled.data.operation;
      if (!view || typeof view.state !== 'string') {
        return { state: 'lost', error: { error: 'invalid_reply', details: 'the poll reply has no operation state' } };
      }
      renderState(op, view);
      if (FINAL_STATES.has(view.state)) {
        return view;
      }
    }
    return {
      state: 'lost',
      error: { error: 'page_timeout', details: 'the page stopped waiting after ' + MAX_FOLLOW_MS / 60000 + ' minutes' },
    };
  }

  /**
   * Starts a card operation and follows it to its end. Returns the final
   * view, or null when the operation did not start.
   */
  async function runOperation(kind, body) {
    if (operation) {
      return null;
    }
    const username = body.username.toLowerCase();
    setOperationControls(false);
    showStatus('waiting', 'Starting the ' + KIND_NOUN[kind] + ' of ' + username + '…', '');

    const started = await api('POST', '/op/' + kind, body);
    if (!started.ok) {
      const failure = describeFailure(kind, username, { error: started.code, details: started.details });
      showStatus('error', failure[0], failure[1]);
      setOperationControls(true);
      return null;
    }

    const op = {
      id: String(started.data.operation),
      kind: kind,
      username: username,
      state: null,
      cancelling: false,
    };
    operation = op;
    openPrompt(op);
    renderState(op, { state: started.data.state || 'queued' });

    const view = await follow(op);

    operation = null;
    closePrompt();
    setOperationControls(true);
    refreshHealth();
    return view;
  }

  /** Shows the outcome of an operation that did not succeed. */
  function reportUnsuccessful(kind, username, view) {
    if (view.state === 'lost') {
      showStatus(
        'error',
        'The page lost track of the ' + KIND_NOUN[kind] + ' of ' + username + '. Look up the enrollment or log in again to see where it stands.',
        view.error && view.error.details,
      );
      return;
    }
    const error = view.state === 'cancelled' ? { error: 'card_cancelled', details: '' } : view.error;
    const failure = describeFailure(kind, username, error);
    showStatus('error', failure[0], failure[1]);
  }

  async function cancelOperation() {
    const op = operation;
    if (!op || op.cancelling) {
      return;
    }
    op.cancelling = true;
    ui.cancelOperation.setAttribute('aria-disabled', 'true');
    ui.cancelOperation.textContent = 'Cancelling…';
    showStatus('waiting', 'Cancelling the ' + KIND_NOUN[op.kind] + ' of ' + op.username + '…', '');

    const result = await api('POST', '/op/' + encodeURIComponent(op.id) + '/cancel', {});
    if (!result.ok && operation === op) {
      op.cancelling = false;
      ui.cancelOperation.removeAttribute('aria-disabled');
      ui.cancelOperation.textContent = 'Cancel';
      showStatus('error', 'The cancel request failed; the card may still be waiting.', result.details);
    }
  }

  async function enroll(event) {
    event.preventDefault();
    const body = { username: ui.enrollUsername.value.trim() };
    const displayName = ui.enrollDisplayName.value.trim();
    if (displayName !== '') {
      body.display_name = displayName;
    }
    const username = body.username.toLowerCase();

    const view = await runOperation('enroll', body);
    if (!view) {
      ui.enrollUsername.focus();
      return;
    }
    if (view.state !== 'succeeded') {
      reportUnsuccessful('enroll', username, view);
      ui.enrollSubmit.focus();
      return;
    }

    showStatus('success', username + ' is enrolled on the ChromeCard.', 'You can log in now.');
    ui.enrollForm.reset();
    ui.loginUsername.value = username;
    ui.loginSubmit.focus();
    if (view.result && view.result.user) {
      renderEnrollment({ username: username, enrolled: true, user: view.result.user });
    }
  }

  async function login(event) {
    event.preventDefault();
    const username = ui.loginUsername.value.trim().toLowerCase();

    const view = await runOperation('login', { username: username });
    if (!view) {
      ui.loginUsername.focus();
      return;
    }
    if (view.state !== 'succeeded') {
      reportUnsuccessful('login', username, view);
      ui.loginSubmit.focus();
      return;
    }

    // The poll that reported success set the session cookie; the status
    // request confirms that the browser kept it.
    const status = await api('POST', '/session/status', {});
    if (!status.ok) {
      showStatus('error', 'The card confirmed the login, but the browser did not keep the session cookie.', status.details);
      return;
    }
    startSession(status.data.username, status.data.expires_at);
    showStatus('success', 'Logged in as ' + status.data.username + '.', 'You can call the protected counter now.');
    ui.counterCall.focus();
  }

  // ---------------------------------------------------------------------
  // The session

  function formatDuration(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const hours = Math.floor(total / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const seconds = total % 60;
    if (hours > 0) {
      return hours + ' h ' + String(minutes).padStart(2, '0') + ' min ' + String(seconds).padStart(2, '0') + ' s';
    }
    if (minutes > 0) {
      return minutes + ' min ' + String(seconds).padStart(2, '0') + ' s';
    }
    return seconds + ' s';
  }

  function setExpiry(expiresAt) {
    const parsed = Date.parse(expiresAt);
    if (session && !Number.isNaN(parsed)) {
      session.expiresAt = parsed;
    }
  }

  // NOTE: the countdown compares the proxy's expiry time with this
  // computer's clock, so clock skew between the two shifts it.
  function tick() {
    if (!session) {
      return;
    }
    const left = session.expiresAt - Date.now();
    if (left <= 0) {
      ui.sessionLeft.textContent = 'expired';
      stopCountdown();
      confirmExpiry();
      return;
    }
    ui.sessionLeft.textContent = formatDuration(left);
    ui.sessionLeft.setAttribute('datetime', 'PT' + Math.ceil(left / 1000) + 'S');
  }

  function stopCountdown() {
    if (countdownTimer !== null) {
      clearInterval(countdownTimer);
      countdownTimer = null;
    }
  }

  /** Asks the proxy whether a session whose countdown ran out really ended. */
  async function confirmExpiry() {
    const status = await api('POST', '/session/status', {});
    if (status.ok) {
      startSession(status.data.username, status.data.expires_at);
      return;
    }
    endSession();
    showStatus('info', 'Your session has ended.', 'Log in again to call the protected counter.');
  }

  function startSession(username, expiresAt) {
    const switching = !session || session.username !== username;
    session = { username: username, expiresAt: Date.now() };
    setExpiry(expiresAt);

    ui.sessionUser.textContent = username;
    ui.sessionPanel.hidden = false;
    ui.enrollPanel.hidden = true;
    ui.loginPanel.hidden = true;
    if (switching) {
      clearCounterValues();
      ui.lookupUsername.value = username;
      showEnrollment(username);
    }

    stopCountdown();
    tick();
    countdownTimer = setInterval(tick, COUNTDOWN_TICK_MS);
  }

  function endSession() {
    session = null;
    stopCountdown();
    ui.sessionPanel.hidden = true;
    ui.enrollPanel.hidden = false;
    ui.loginPanel.hidden = false;
    ui.enrollmentManage.hidden = true;
    closeDeleteConfirmation(false);
    clearCounterValues();
  }

  /** Ends the page's session after the proxy returned 401, so `action` did not happen. */
  function sessionLost(action, details) {
    endSession();
    showStatus('error', 'Your session has ended, so ' + action + '. Log in again.', details);
    ui.loginUsername.focus();
  }

  function clearCounterValues() {
    ui.counterLatest.textContent = 'No calls yet.';
    ui.counterValues.replaceChildren();
  }

  async function callCounter() {
    if (pending.has('counter')) {
      return;
    }
    pending.add('counter');
    const result = await api('POST', '/resource/counter', {});
    pending.delete('counter');

    if (result.ok) {
      const value = result.data.value;
      ui.counterLatest.textContent = 'Latest value: ' + value;
      const item = document.createElement('li');
      item.dataset.value = String(value);
      item.textContent = value + ' (at ' + new Date().toLocaleTimeString() + ')';
      ui.counterValues.prepend(item);
      while (ui.counterValues.children.length > MAX_COUNTER_VALUES_SHOWN) {
        ui.counterValues.lastElementChild.remove();
      }
      if (result.data.session) {
        setExpiry(result.data.session.expires_at);
        tick();
      }
      showStatus('success', 'The protected counter returned ' + value + '.', '');
      return;
    }
    if (result.status === 401) {
      sessionLost('the counter was not called', result.details);
      return;
    }
    showStatus('error', 'The counter call failed.', result.details);
  }

  async function logout() {
    if (pending.has('logout')) {
      return;
    }
    pending.add('logout');
    const username = session ? session.username : '';
    const result = await api('POST', '/session/logout', {});
    pending.delete('logout');

    if (result.ok || result.status === 401) {
      endSession();
      showStatus('success', (username || 'You') + ' logged out.', 'The session cookie was removed; calling the counter needs a new login.');
      ui.loginUsername.value = username;
      ui.loginUsername.focus();
      return;
    }
    showStatus('error', 'Logging out failed.', result.details);
  }

  // ---------------------------------------------------------------------
  // Enrollment: look up, update, delete

  function formatTime(text) {
    const parsed = Date.parse(text);
    return Number.isNaN(parsed) ? String(text) : new Date(parsed).toLocaleString();
  }

  /** Shows an enrollment as GET /enroll/status returns it. */
  function renderEnrollment(data) {
    ui.enrollmentDetails.hidden = false;
    const own = session !== null && session.username === data.username;

    if (!data.enrolled || !data.user) {
      ui.enrollmentSummary.textContent = data.username + ' is not enrolled.';
      ui.enrollmentFields.hidden = true;
      ui.enrollmentManage.hidden = true;
      return;
    }

    const user = data.user;
    ui.enrollmentSummary.textContent = own
      ? 'This is your enrollment.'
      : data.username + ' is enrolled. Log in as ' + data.username + ' to change or delete this enrollment.';
    ui.enrollmentUsername.textContent = user.username;
    ui.enrollmentDisplayName.textContent = user.display_name ? user.display_name : '(none)';
    ui.enrollmentCreated.textContent = formatTime(user.created_at);
    ui.enrollmentUpdated.textContent = formatTime(user.updated_at);
    ui.enrollmentCredentials.textContent = String(user.credentials);
    ui.enrollmentFields.hidden = false;

    ui.enrollmentManage.hidden = !own;
    if (own) {
      ui.updateDisplayName.value = user.display_name || '';
    }
  }

  async function showEnrollment(username) {
    const result = await api('GET', '/enroll/status?username=' + encodeURIComponent(username));
    if (!result.ok) {
      showStatus('error', 'The enrollment of ' + username + ' could not be looked up.', result.details);
      return false;
    }
    renderEnrollment(result.data);
    return true;
  }

  async function lookup(event) {
    event.preventDefault();
    const username = ui.lookupUsername.value.trim().toLowerCase();
    if (await showEnrollment(username)) {
      showStatus('info', 'Showing the enrollment of ' + username + '.', '');
    }
  }

  async function updateDisplayName(event) {
    event.preventDefault();
    if (!session || pending.has('update')) {
      return;
    }
    pending.add('update');
    const displayName = ui.updateDisplayName.value.trim();
    const result = await api('POST', '/enroll/update', { display_name: displayName });
    pending.delete('update');

    if (result.ok) {
      renderEnrollment({ username: result.data.user.username, enrolled: true, user: result.data.user });
      showStatus('success', displayName === '' ? 'Display name removed.' : 'Display name saved: ' + displayName + '.', '');
      return;
    }
    if (result.status === 401) {
      sessionLost('the display name was not saved', result.details);
      return;
    }
    showStatus('error', 'The display name was not saved.', result.details);
  }

  function openDeleteConfirmation() {
    if (!session) {
      return;
    }
    ui.deleteUsername.textContent = session.username;
    ui.deleteConfirm.hidden = false;
    ui.deleteStart.hidden = true;
    // The safe choice gets the focus, so that Enter does not delete.
    ui.deleteCancelled.focus();
  }

  function closeDeleteConfirmation(moveFocus) {
    ui.deleteConfirm.hidden = true;
    ui.deleteStart.hidden = false;
    if (moveFocus) {
      ui.deleteStart.focus();
    }
  }

  async function deleteEnrollment() {
    if (!session || pending.has('delete')) {
      return;
    }
    pending.add('delete');
    const username = session.username;
    const result = await api('POST', '/enroll/delete', {});
    pending.delete('delete');

    if (result.ok) {
      endSession();
      renderEnrollment({ username: username, enrolled: false });
      const ended = Number(result.data.sessions_ended) || 0;
      showStatus(
        'success',
        'The enrollment of ' + username + ' was deleted and you are logged out.',
        ended + (ended === 1 ? ' session' : ' sessions') + ' ended. Enroll again to use the service.',
      );
      ui.enrollUsername.focus();
      return;
    }
    if (result.status === 401) {
      sessionLost('the enrollment was not deleted', result.details);
      return;
    }
    closeDeleteConfirmation(true);
    showStatus('error', 'The enrollment was not deleted.', result.details);
  }

  // ---------------------------------------------------------------------
  // Start

  /**
   * Keeps a control that receives focus from scrolling under the sticky
   * status line: focus scrolling honours scroll-padding-top.
   */
  function keepFocusClearOfStatus() {
    document.documentElement.style.scrollPaddingTop = ui.status.offsetHeight + 8 + 'px';
  }

  function bind() {
    keepFocusClearOfStatus();
    new ResizeObserver(keepFocusClearOfStatus).observe(ui.status);

    ui.enrollForm.addEventListener('submit', enroll);
    ui.loginForm.addEventListener('submit', login);
    ui.lookupForm.addEventListener('submit', lookup);
    ui.updateForm.addEventListener('submit', updateDisplayName);
    ui.cancelOperation.addEventListener('click', cancelOperation);
    ui.counterCall.addEventListener('click', callCounter);
    ui.logout.addEventListener('click', logout);
    ui.deleteStart.addEventListener('click', openDeleteConfirmation);
    ui.deleteConfirmed.addEventListener('click', deleteEnrollment);
    ui.deleteCancelled.addEventListener('click', function () {
      closeDeleteConfirmation(true);
      showStatus('info', 'Your enrollment was kept.', '');
    });

    document.addEventListener('keydown', function (event) {
      if (event.key === 'Escape' && operation) {
        cancelOperation();
      }
    });

    // Leaving the page cancels its card operation, so the card stops
    // waiting for a confirmation whose result no page would show.
    window.addEventListener('pagehide', function () {
      if (operation) {
        fetch('/op/' + encodeURIComponent(operation.id) + '/cancel', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json' },
          body: '{}',
          keepalive: true,
        }).catch(function () {});
      }
    });
  }

  async function start() {
    bind();
    refreshHealth();

    // POST /session/status counts as activity for the session's idle
    // timeout, so the page sends it only at start, after login and when the
    // countdown runs out, never on a timer.
    const status = await api('POST', '/session/status', {});
    if (status.ok) {
      startSession(status.data.username, status.data.expires_at);
      showStatus('info', 'Logged in as ' + status.data.username + '.', '');
      return;
    }
    if (status.status === 401) {
      showStatus('info', 'Ready. Enroll, or log in if you are already enrolled.', '');
      return;
    }
    showStatus('error', 'The proxy did not respond to the session check.', status.details);
  }

  start();
})();
