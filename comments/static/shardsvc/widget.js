/*
 * shardsvc comments widget: one file, no build step, for current browsers.
 *
 * Embed on a page of one of the site's allowed origins:
 *   <div data-shardsvc-comments data-api="https://comments.example/api" data-site="acme"
 *        data-key="pk_..." data-user-token="(signed by the site's backend)" data-user-id="u42"></div>
 *   <script src="https://comments.example/static/shardsvc/widget.<hash>.js" defer></script>
 * Optional: data-page-url (default: this page without its fragment), data-page-title,
 * data-order (newest | oldest | top), data-live="off", data-css (the stylesheet's URL).
 *
 * Safety: every text that comes from the API is set with textContent, never as HTML.
 * Read-your-writes: the causal token of each answer is kept here, in the page (third-party
 * cookies are blocked), and sent back with every later call.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  var ORDERS = [["newest", "Newest first"], ["oldest", "Oldest first"], ["top", "Top rated"]];
  var MAX_RETRIES = 3;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "className") node.className = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function loadStyles(root) {
    if (document.querySelector("link[data-shardsvc-css]")) return;
    var href = root.dataset.css || (script && script.dataset.css) ||
      (script ? new URL("widget.css", script.src).href : null);
    if (!href) return;
    var link = el("link", { rel: "stylesheet", href: href, "data-shardsvc-css": "" });
    document.head.appendChild(link);
  }

  function ApiError(status, message, retryAfter) {
    this.status = status;
    this.message = message;
    this.retryAfter = retryAfter;
  }

  function Widget(root) {
    var data = root.dataset;
    this.root = root;
    this.api = (data.api || "").replace(/\/$/, "") + "/sites/" + encodeURIComponent(data.site || "");
    this.key = data.key || "";
    this.userToken = data.userToken || "";
    this.userId = data.userId || "";
    this.pageUrl = data.pageUrl || location.href.split("#")[0];
    this.pageTitle = data.pageTitle || document.title || "";
    this.order = data.order || "newest";
    this.live = data.live !== "off";
    this.causal = "";          // the latest causal token: read-your-writes, kept in the page
    this.threadId = null;      // a string, as the API writes every id
    this.cursor = null;
    this.nodes = {};           // comment id -> {data, li}
    this.myVotes = {};         // comment id -> -1 | 0 | 1, this page's votes
    this.lastEventId = "";
    this.build();
  }

  Widget.prototype.build = function () {
    var self = this;
    var root = this.root;
    root.classList.add("shardsvc");
    root.textContent = "";
    var section = el("section", { "aria-label": "Comments" });
    var header = el("div", { className: "shardsvc-header" });
    this.heading = el("h2", { className: "shardsvc-title" }, "Comments");
    var orderId = "shardsvc-order-" + Math.random().toString(36).slice(2);
    var label = el("label", { "for": orderId }, "Sort by");
    this.orderSelect = el("select", { id: orderId });
    ORDERS.forEach(function (pair) {
      var option = el("option", { value: pair[0] }, pair[1]);
      if (pair[0] === self.order) option.selected = true;
      self.orderSelect.appendChild(option);
    });
    this.orderSelect.addEventListener("change", function () {
      self.order = self.orderSelect.value;
      self.reload();
    });
    header.append(this.heading, label, this.orderSelect);
    this.status = el("p", { className: "shardsvc-status", role: "status", "aria-live": "polite" });
    this.alert = el("p", { className: "shardsvc-error", role: "alert" });
    section.append(header, this.status, this.alert);
    if (this.userToken) {
      section.appendChild(this.composer(null));
    } else {
      section.appendChild(el("p", { className: "shardsvc-signin" }, "Sign in to comment."));
    }
    this.list = el("ul", { className: "shardsvc-list", "aria-label": "Comments" });
    this.more = el("button", { type: "button", className: "shardsvc-more", hidden: "" },
      "Load more comments");
    this.more.addEventListener("click", function () { self.loadPage(); });
    section.append(this.list, this.more);
    root.appendChild(section);
  };

  Widget.prototype.say = function (text) {
    this.status.textContent = text;
  };

  Widget.prototype.fail = function (error) {
    var text;
    if (!(error instanceof ApiError)) text = "Could not reach the comments service.";
    else if (error.status === 429) {
      text = "Too many requests: please wait " + (error.retryAfter || "a few") +
        " seconds and try again.";
    } else if (error.status === 503) {
      text = "Comments are briefly unavailable" +
        (error.retryAfter ? " (retried for " + error.retryAfter + " s)" : "") +
        ". Please try again in a moment.";
    } else text = error.message || ("Request failed (" + error.status + ").");
    this.alert.textContent = text;
  };

  // One call to the API. Reads that get a 503 are retried after its Retry-After (bounded);
  // writes never are (the user decides).
  Widget.prototype.call = function (method, path, body, attempt) {
    var self = this;
    attempt = attempt || 0;
    var headers = { "X-Api-Key": this.key, "Accept": "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.userToken && method !== "GET") headers["X-User-Token"] = this.userToken;
    if (this.causal) headers["X-Causal-Token"] = this.causal;
    return fetch(this.api + path, {
      method: method, headers: headers, credentials: "omit", mode: "cors",
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (response) {
      var token = response.headers.get("X-Causal-Token");
      if (token) self.causal = token;
      if (response.status === 204) return null;
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (response.ok) return json;
        var retry = parseInt(response.headers.get("Retry-After") || "", 10) || 0;
        if (response.status === 503 && method === "GET" && attempt < MAX_RETRIES) {
          self.say("Comments are briefly unavailable; retrying in " + (retry || 1) + " s…");
          return new Promise(function (resolve) {
            setTimeout(resolve, Math.min(retry || 1, 10) * 1000);
          }).then(function () { return self.call(method, path, body, attempt + 1); });
        }
        throw new ApiError(response.status, json.message, retry);
      });
    });
  };

  Widget.prototype.start = function () {
    var self = this;
    this.say("Loading comments…");
    return this.call("PUT", "/threads", { url: this.pageUrl, title: this.pageTitle.slice(0, 300) })
      .then(function (thread) {
        self.threadId = thread.id;
        self.root.dataset.threadId = thread.id;
        self.root.querySelectorAll(".shardsvc-compose button").forEach(function (b) {
          b.disabled = false;
        });
        self.heading.textContent = "Comments (" + thread.comment_count + ")";
        self.count = thread.comment_count;
        return self.loadPage();
      })
      .then(function () { if (self.live) self.listen(); })
      .catch(function (error) { self.say(""); self.fail(error); });
  };

  Widget.prototype.reload = function () {
    this.cursor = null;
    this.nodes = {};
    this.list.textContent = "";
    return this.loadPage();
  };

  Widget.prototype.loadPage = function () {
    var self = this;
    var query = "?order=" + this.order + "&limit=20" +
      (this.cursor ? "&cursor=" + encodeURIComponent(this.cursor) : "");
    this.more.disabled = true;
    return this.call("GET", "/threads/" + this.threadId + "/comments" + query)
      .then(function (page) {
        page.items.forEach(function (item) { self.list.appendChild(self.render(item)); });
        self.cursor = page.next_cursor;
        self.more.hidden = !page.next_cursor;
        self.more.disabled = false;
        self.say(self.list.children.length ? "" : "No comments yet.");
        self.alert.textContent = "";
      })
      .catch(function (error) { self.more.disabled = false; self.say(""); self.fail(error); });
  };

  Widget.prototype.setCount = function (delta) {
    this.count = Math.max(0, (this.count || 0) + delta);
    this.heading.textContent = "Comments (" + this.count + ")";
  };

  // A form to post a comment (parentId null) or a reply.
  Widget.prototype.composer = function (parentId, onDone) {
    var self = this;
    var form = el("form", { className: "shardsvc-compose" });
    var id = "shardsvc-body-" + Math.random().toString(36).slice(2);
    var label = el("label", { "for": id }, parentId ? "Your reply" : "Add a comment");
    var area = el("textarea", { id: id, rows: "3", maxlength: "10000", required: "" });
    var button = el("button", { type: "submit" }, parentId ? "Post reply" : "Post comment");
    // The page's thread is looked up first: posting waits for it.
    if (!this.threadId) button.disabled = true;
    form.append(label, area, button);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = area.value;
      if (!body.trim()) { self.alert.textContent = "Write something first."; return; }
      button.disabled = true;
      var payload = { body: body };
      if (parentId) payload.parent_id = parentId;
      self.call("POST", "/threads/" + self.threadId + "/comments", payload)
        .then(function (comment) {
          area.value = "";
          self.alert.textContent = "";
          self.place(comment);
          self.say(parentId ? "Reply posted." : "Comment posted.");
          if (onDone) onDone();
        })
        .catch(function (error) { self.fail(error); })
        .then(function () { button.disabled = false; });
    });
    return form;
  };

  // A new comment (ours or a live one) put where it belongs, once.
  Widget.prototype.place = function (comment) {
    if (this.nodes[comment.id]) return;
    var li = this.render(comment);
    if (comment.parent_id) {
      var parent = this.nodes[comment.parent_id];
      if (!parent) return;  // its thread is not on the pages shown
      parent.replies.appendChild(li);
    } else if (this.order === "oldest") {
      if (this.cursor) return;  // it belongs after pages not loaded yet
      this.list.appendChild(li);
    } else {
      this.list.insertBefore(li, this.list.firstChild);
    }
    this.setCount(1);
    this.say("");
  };

  Widget.prototype.render = function (comment) {
    var self = this;
    var li = el("li", { className: "shardsvc-comment", "data-comment-id": comment.id });
    var article = el("article", { "aria-label": "Comment by " + (comment.author_name || comment.author) });
    var meta = el("p", { className: "shardsvc-meta" });
    meta.append(el("span", { className: "shardsvc-author" }, comment.author_name || comment.author),
      " · ", el("time", { datetime: comment.created_at }, new Date(comment.created_at).toLocaleString()));
    var body = el("p", { className: "shardsvc-body" });
    var actions = el("div", { className: "shardsvc-actions" });
    var score = el("span", { className: "shardsvc-score", "aria-label": "Score" });
    var replies = el("ul", { className: "shardsvc-replies" });
    var node = { data: comment, li: li, body: body, score: score, replies: replies, meta: meta };
    this.nodes[comment.id] = node;
    article.append(meta, body, actions);
    li.append(article, replies);
    this.fill(node);

    if (this.userToken) {
      var up = el("button", { type: "button", className: "shardsvc-up", "aria-pressed": "false",
        "aria-label": "Upvote" }, "▲");
      var down = el("button", { type: "button", className: "shardsvc-down", "aria-pressed": "false",
        "aria-label": "Downvote" }, "▼");
      up.addEventListener("click", function () { self.vote(node, 1, up, down); });
      down.addEventListener("click", function () { self.vote(node, -1, up, down); });
      var reply = el("button", { type: "button", className: "shardsvc-reply" }, "Reply");
      reply.addEventListener("click", function () { self.toggleReply(node, reply); });
      actions.append(up, score, down, reply);
      node.votes = [up, down];
      if (this.userId && comment.author === this.userId) {
        var edit = el("button", { type: "button", className: "shardsvc-edit" }, "Edit");
        var remove = el("button", { type: "button", className: "shardsvc-delete" }, "Delete");
        edit.addEventListener("click", function () { self.edit(node, edit); });
        remove.addEventListener("click", function () { self.remove(node); });
        actions.append(edit, remove);
        node.own = [edit, remove];
      }
    } else {
      actions.append(score);
    }
    (comment.replies || []).forEach(function (child) { replies.appendChild(self.render(child)); });
    this.fill(node);  // again, now that its buttons exist (a deleted comment has none to use)
    return li;
  };

  // Text only: a body is never parsed as HTML.
  Widget.prototype.fill = function (node) {
    var c = node.data;
    node.body.textContent = c.deleted ? "[deleted]" : c.body;
    node.body.classList.toggle("shardsvc-deleted", !!c.deleted);
    node.score.textContent = String(c.score);
    if (c.edited_at && !node.meta.querySelector(".shardsvc-edited")) {
      node.meta.append(" ", el("span", { className: "shardsvc-edited" }, "(edited)"));
    }
    if (c.deleted && node.own) node.own.forEach(function (b) { b.remove(); });
    if (c.deleted && node.votes) node.votes.forEach(function (b) { b.disabled = true; });
  };

  Widget.prototype.vote = function (node, value, up, down) {
    var self = this;
    var id = node.data.id;
    var next = this.myVotes[id] === value ? 0 : value;
    this.call("PUT", "/comments/" + id + "/vote", { value: next })
      .then(function (answer) {
        self.myVotes[id] = answer.value;
        node.data.score = answer.score;
        self.fill(node);
        up.setAttribute("aria-pressed", String(answer.value === 1));
        down.setAttribute("aria-pressed", String(answer.value === -1));
        self.alert.textContent = "";
      })
      .catch(function (error) { self.fail(error); });
  };

  Widget.prototype.toggleReply = function (node, button) {
    var open = node.li.querySelector(":scope > .shardsvc-compose");
    if (open) { open.remove(); button.setAttribute("aria-expanded", "false"); return; }
    var form = this.composer(node.data.id, function () {
      form.remove();
      button.setAttribute("aria-expanded", "false");
      button.focus();
    });
    node.li.insertBefore(form, node.replies);
    button.setAttribute("aria-expanded", "true");
    form.querySelector("textarea").focus();
  };

  Widget.prototype.edit = function (node, button) {
    var self = this;
    if (node.editing) return;
    node.editing = true;
    var form = el("form", { className: "shardsvc-edit-form" });
    var id = "shardsvc-edit-" + Math.random().toString(36).slice(2);
    var area = el("textarea", { id: id, rows: "3", required: "" });
    area.value = node.data.body;
    var save = el("button", { type: "submit" }, "Save");
    var cancel = el("button", { type: "button" }, "Cancel");
    form.append(el("label", { "for": id }, "Edit your comment"), area, save, cancel);
    node.body.hidden = true;
    node.body.after(form);
    area.focus();
    function close() { form.remove(); node.body.hidden = false; node.editing = false; button.focus(); }
    cancel.addEventListener("click", close);
    form.addEventListener("keydown", function (event) { if (event.key === "Escape") close(); });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      save.disabled = true;
      self.call("PATCH", "/comments/" + node.data.id, { body: area.value })
        .then(function (comment) {
          node.data.body = comment.body;
          node.data.edited_at = comment.edited_at;
          self.fill(node);
          close();
          self.say("Comment edited.");
        })
        .catch(function (error) { save.disabled = false; self.fail(error); });
    });
  };

  Widget.prototype.remove = function (node) {
    var self = this;
    this.call("DELETE", "/comments/" + node.data.id)
      .then(function () {
        if (!node.data.deleted) self.setCount(-1);
        node.data.deleted = true;
        node.data.body = "";
        self.fill(node);
        self.say("Comment deleted.");
      })
      .catch(function (error) { self.fail(error); });
  };

  // Live updates: Server-Sent Events of this thread. EventSource cannot send headers, so the
  // publishable key goes in the query (it is public; the origin check still applies). On a
  // dropped connection the browser reconnects by itself and sends Last-Event-ID, and the
  // server replays what was missed.
  Widget.prototype.listen = function () {
    var self = this;
    if (!window.EventSource) return;
    var url = this.api + "/threads/" + this.threadId + "/events?key=" + encodeURIComponent(this.key);
    var source = new EventSource(url);
    this.source = source;
    source.addEventListener("comment", function (event) { self.onEvent(JSON.parse(event.data)); });
    source.addEventListener("open", function () { self.root.dataset.liveState = "open"; });
    source.addEventListener("error", function () {
      self.root.dataset.liveState = "reconnecting";
    });
  };

  Widget.prototype.onEvent = function (event) {
    var comment = event.comment;
    if (!comment) return;
    var node = this.nodes[comment.id];
    if (event.type === "created") {
      if (!node) this.place(comment);
      return;
    }
    if (!node) return;
    if (event.type === "deleted" && !node.data.deleted) this.setCount(-1);
    node.data.body = comment.body;
    node.data.deleted = comment.deleted;
    node.data.edited_at = comment.edited_at;
    node.data.score = comment.score;
    this.fill(node);
  };

  function mountAll() {
    var roots = document.querySelectorAll("[data-shardsvc-comments]");
    Array.prototype.forEach.call(roots, function (root) {
      if (root.shardsvc) return;
      loadStyles(root);
      root.shardsvc = new Widget(root);
      root.shardsvc.start();
    });
  }

  window.ShardsvcComments = { mount: mountAll };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mountAll);
  else mountAll();
})();
