/* Squall's live pages (server-sent events, swapped in by htmx's SSE extension): where a stream
   resumes after it failed, so nothing is shown twice; what a swap must not take from the person
   reading; and the executions list's filters, folded on a narrow screen.

   A browser that loses a stream reconnects by itself and names the last event it got
   (Last-Event-ID). But an error status (a proxy's 502 while Squall restarts) closes the EventSource
   for good, and htmx then opens a new one from the element's `sse-connect` URL, naming nothing: the
   server would send again everything since the URL's cursor, which is where the page stood when it
   was loaded. So:

   - each event applied moves the cursor in the URL to its id (`data-resume` names the parameter:
     `after`, the last output chunk shown; `top`, the newest row of the list), and htmx's next
     stream goes on from there;
   - an event that appends (output) and is not past the cursor is dropped: it is shown already;
   - rows prepended to a list that the list has already (`tr` with the same id) are kept once, the
     new copy, which is the newer.

   Event ids are chunk numbers or execution ids (24 hexadecimal digits): both order by length, then
   as text.

   A swap must not undo what the person did:
   - a row replaced (its status changed) or prepended again keeps its checkbox ticked for the bulk
     cancel (by the checkbox's id; htmx itself gives the focus back to the element of the focused
     one's id);
   - output appended to a box read at its end keeps it at its end, as `tail -f` does (and the box
     opens at its end); one scrolled up to read stays where it is.
   Both are done once the swap is: htmx swaps as soon as `htmx:sseBeforeMessage`'s listeners return,
   in the same task, so a microtask queued there runs once the new content is in.

   A stream the server ends because the page's session ended (a logout here or in another tab,
   `squall user logout`, a new password, 12 hours idle) sends `end` with the data `signed-out`
   (bot/web/live.py). `sse-close` only closes the stream, and the page went on showing "running" with
   its Cancel button, frozen without a word. So the page then says so at its top, with a link to the
   login page that comes back here, and its stream's element is marked no longer live
   (`data-live="signed-out"`). htmx hands each stream it opens to `htmx:sseOpen`, where it is listened
   to; the data reaches no other listener (`htmx:sseClose` carries none).

   A stream is open only while its page is shown. Each holds one of the 6 connections Chromium allows
   a host over HTTP/1.1 (uvicorn speaks no other), and every other request to Squall, from any tab,
   waits for a free one: with 6 live tabs open, no other page of Squall loaded. So htmx's streams are
   made here (`htmx.createEventSource`) as a `Stream`, which the extension listens to as to an
   EventSource: it closes its connection while the tab is hidden (`visibilitychange`) and opens it
   again, on the stream's URL of then, once the tab is shown, which goes on from the last event
   applied, as after a 502; a stream the server ended, or the extension closed, stays closed. It first
   opens once the page has loaded (`load`), so a page whose stream waits for a connection has
   everything else of its own already.

   The ended run's output replaces the live copy (`output`, innerHTML): a box that was at its end
   stays at its end there too.

   The list's filters are rendered open (without this script they stay so); on a narrow screen, where
   they would fill it, they start folded (40rem: squall.css's narrow screen too). */
(function () {
  "use strict";

  function atOrBefore(id, cursor) {
    return id.length !== cursor.length ? id.length < cursor.length : id <= cursor;
  }

  /* The element that holds the stream, when the page asks for resuming (`data-resume`). */
  function streamOf(element) {
    var holder = element.closest("[sse-connect]");
    return holder && holder.dataset.resume ? holder : null;
  }

  function streamUrl(holder) {
    return new URL(holder.getAttribute("sse-connect"), window.location.href);
  }

  function cursorOf(holder) {
    return streamUrl(holder).searchParams.get(holder.dataset.resume) || "";
  }

  function resumeAt(holder, id) {
    var url = streamUrl(holder);
    var cursor = url.searchParams.get(holder.dataset.resume) || "";
    if (cursor && atOrBefore(id, cursor)) {
      return;
    }
    url.searchParams.set(holder.dataset.resume, id);
    holder.setAttribute("sse-connect", url.pathname + url.search);
  }

  function swapOf(element) {
    return (element.getAttribute("hx-swap") || "").split(" ")[0];
  }

  /* The ids of the checkboxes ticked in `element`. */
  function tickedIn(element) {
    return Array.prototype.map.call(element.querySelectorAll("input[type=checkbox][id]:checked"), function (box) {
      return box.id;
    });
  }

  function tick(ids) {
    ids.forEach(function (id) {
      var box = document.getElementById(id);
      if (box) {
        box.checked = true;
      }
    });
  }

  /* Within a few pixels of its end: fractional scroll positions never quite reach it. */
  function atEnd(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight <= 24;
  }

  function toEnd(box) {
    box.scrollTop = box.scrollHeight;
  }

  /* The first element of each id among `list`'s children stays; later ones go. */
  function keepOnce(list) {
    var seen = {};
    Array.prototype.slice.call(list.children).forEach(function (child) {
      if (!child.id) {
        return;
      }
      if (seen[child.id]) {
        child.remove();
      }
      seen[child.id] = true;
    });
  }

  document.addEventListener("htmx:sseBeforeMessage", function (event) {
    var holder = streamOf(event.target);
    var id = event.detail.lastEventId;
    var swap = swapOf(event.target);
    if (holder && id && swap === "beforeend" && atOrBefore(id, cursorOf(holder))) {
      event.preventDefault();
      return;
    }
    var ticked = tickedIn(event.target);
    if (ticked.length) {
      queueMicrotask(function () { tick(ticked); });
    }
    if (swap === "beforeend" && atEnd(event.target)) {
      queueMicrotask(function () { toEnd(event.target); });
    }
    var following = Array.prototype.filter.call(event.target.querySelectorAll("pre.output"), atEnd);
    if (following.length) {
      var names = following.map(function (box) { return box.className.match(/output-\w+/)[0]; });
      queueMicrotask(function () {
        names.forEach(function (name) {
          var box = event.target.querySelector("pre." + name);
          if (box) {
            toEnd(box);
          }
        });
      });
    }
  });

  document.addEventListener("htmx:sseMessage", function (event) {
    var holder = streamOf(event.target);
    var id = event.detail.lastEventId;
    if (!holder) {
      return;
    }
    if (id) {
      resumeAt(holder, id);
    }
    if (swapOf(event.target) === "afterbegin") {
      keepOnce(event.target);
    }
  });

  var SIGNED_OUT = "signed-out";

  /* The page's notice that it follows nothing any more, once (several streams may end so). */
  function signedOut(holder) {
    holder.dataset.live = SIGNED_OUT;
    if (document.getElementById("signed-out")) {
      return;
    }
    var login = document.createElement("a");
    login.href = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
    login.textContent = "Log in again";
    var notice = document.createElement("p");
    notice.id = "signed-out";
    notice.className = "notice signed-out";
    notice.setAttribute("role", "alert");
    notice.append("Signed out: this page is no longer updating. ", login, ".");
    var main = document.getElementById("main") || document.body;
    main.insertBefore(notice, main.firstChild);
  }

  document.addEventListener("htmx:sseOpen", function (event) {
    var holder = event.target;
    var source = event.detail.source;
    if (source.squallWatched) {
      return;  /* opened again by the browser itself (a reconnect): listened to already */
    }
    source.squallWatched = true;
    source.addEventListener("end", function (message) {
      if (message.data === SIGNED_OUT) {
        signedOut(holder);
      }
    });
  });

  Array.prototype.forEach.call(document.querySelectorAll("pre.output[sse-swap]"), toEnd);

  var streams = [];

  /* What the SSE extension takes for an EventSource (`addEventListener`, `removeEventListener`,
     `onopen`, `onerror`, `readyState`, `close`), open only while the page is shown. Its listeners are
     kept here and put on each EventSource it opens. */
  function Stream(url) {
    this.url = url;
    this.holder = document.querySelector("[sse-connect=\"" + CSS.escape(url) + "\"]");
    this.listeners = [];
    this.source = null;
    this.closed = false;
    this.onopen = null;
    this.onerror = null;
    streams.push(this);
    if (document.readyState === "complete") {
      this.resume();
    } else {
      window.addEventListener("load", this.resume.bind(this), { once: true });
    }
  }

  Object.defineProperty(Stream.prototype, "readyState", {
    get: function () {
      if (this.closed) {
        return EventSource.CLOSED;
      }
      return this.source ? this.source.readyState : EventSource.CONNECTING;  /* held: it will be open */
    }
  });

  Stream.prototype.addEventListener = function (type, listener) {
    this.listeners.push([type, listener]);
    if (this.source) {
      this.source.addEventListener(type, listener);
    }
  };

  Stream.prototype.removeEventListener = function (type, listener) {
    this.listeners = this.listeners.filter(function (pair) {
      return pair[0] !== type || pair[1] !== listener;
    });
    if (this.source) {
      this.source.removeEventListener(type, listener);
    }
  };

  /* Open, on the holder's URL of now (its cursor at the last event applied), unless hidden or closed. */
  Stream.prototype.resume = function () {
    if (this.closed || this.source || document.visibilityState === "hidden") {
      return;
    }
    var self = this;
    var source = new EventSource(this.holder ? this.holder.getAttribute("sse-connect") : this.url,
                                 { withCredentials: true });
    source.onopen = function (event) {
      if (self.onopen) {
        self.onopen(event);
      }
    };
    source.onerror = function (event) {
      if (source.readyState === EventSource.CLOSED) {
        self.close();  /* given up (an error status): the extension opens a new stream of its own */
      }
      if (self.onerror) {
        self.onerror(event);
      }
    };
    this.listeners.forEach(function (pair) {
      source.addEventListener(pair[0], pair[1]);
    });
    this.source = source;
  };

  /* The connection closed while the page is hidden; `resume` opens it again. */
  Stream.prototype.hold = function () {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  };

  /* For good: the server ended it (`end`), its element left the page, or it failed. */
  Stream.prototype.close = function () {
    if (!this.closed) {
      this.closed = true;
      this.hold();
      streams.splice(streams.indexOf(this), 1);
    }
  };

  htmx.createEventSource = function (url) {
    return new Stream(url);
  };

  document.addEventListener("visibilitychange", function () {
    streams.slice().forEach(function (stream) {
      if (document.visibilityState === "hidden") {
        stream.hold();
      } else {
        stream.resume();
      }
    });
  });

  var filters = document.querySelector("details.filters-box");
  if (filters && window.matchMedia("(max-width: 40rem)").matches) {
    filters.open = false;
  }
})();
