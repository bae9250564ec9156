/* Squall's live pages (server-sent events, swapped in by htmx's SSE extension): where a stream
   resumes after it failed, so nothing is shown twice.

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
   as text. */
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
    if (holder && id && swapOf(event.target) === "beforeend" && atOrBefore(id, cursorOf(holder))) {
      event.preventDefault();
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
})();
