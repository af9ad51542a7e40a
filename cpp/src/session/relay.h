// The relay's decision core: what a session's client and upstream messages mean and what to send
// where. No sockets: the session feeds it whole client frames and upstream bytes and it answers
// through RelayHost (bytes to either side, a cancel, query in flight), so a test can drive it with
// recorded traffic split anywhere.
//
// One state machine for every message flow. A batch is what the client sent since the last
// ReadyForQuery, up to the message that ends it: a Sync, or a simple Query (a batch of one with an
// implicit Sync). One batch is upstream at a time. The queue of client messages awaiting replies
// (pending) tells which statement a DataRow, CommandComplete or ErrorResponse belongs to (budgets,
// records, faults per statement). Recovery is one mechanism: when the proxy fails a statement, its
// error takes the statement's place, the client's messages are dropped to the batch's end, the
// upstream's replies are dropped to its ReadyForQuery, and, where the upstream already ran part of a
// block, a failing statement of the proxy's makes sure it ends failed (or a failed COMMIT ends it).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "config/server_config.h"
#include "faults/fault_rules.h"
#include "guardrails/guardrail_set.h"
#include "guardrails/result_budget.h"
#include "observability/session_observer.h"
#include "protocol/errors.h"
#include "protocol/frame.h"
#include "session/loop_task.h"

namespace pgwire_proxy::session {

// What the relay asks of the session around it.
class RelayHost {
 public:
  virtual ~RelayHost() = default;
  virtual void toClient(std::span<const char> bytes) = 0;
  virtual void toUpstream(std::span<const char> bytes) = 0;
  // The proxy's own CancelRequest for the statement the upstream is running.
  virtual void cancelUpstream() = 0;
  // Whether a client's CancelRequest may reach the upstream now (a query is in flight).
  virtual void setCancellable(bool cancellable) = 0;
  // A ParameterStatus the upstream sent during the session (a SET, a configuration reload, a
  // promotion), relayed as well: under --reuse-upstream the connection's next client is told it.
  virtual void upstreamParameter(std::string_view name, std::string_view value) = 0;
};

// What the relay reads of its surroundings; the session's, shared read-only.
struct RelayContext {
  std::uint64_t sessionId = 0;
  observability::SessionObserver& observer;
  const guardrails::GuardrailHolder& guardrails;
  faults::FaultRegistry* faults = nullptr;  // null: none
  bool extendedRelay = false;               // --extended-protocol=relay
  config::Milliseconds queryTimeout{0};     // the statement_timeout in force upstream (the backstop follows it)
  std::string user;
  std::string database;
  std::string applicationName;
  bool fullProtocol = false;        // --protocol=full: COPY both ways and function calls are relayed
  std::uint64_t maxCopyInBytes = 0; // one COPY FROM STDIN's bytes upstream; 0 = off
};

// The upstream sent something that cannot be relayed: the session ends with 08006.
struct UpstreamFailure {
  std::string why;
};

class Relay {
 public:
  Relay(RelayContext context, RelayHost& host);

  // A whole client frame (not Terminate: the session handles the end). False: the relay cannot take
  // it now, it stays buffered and is offered again once acceptingClient() says so.
  [[nodiscard]] bool onClientFrame(const protocol::Frame& frame);
  // Upstream bytes from the start of what is buffered; returns how many it consumed (the rest begins
  // a frame it must see whole). Forwarded bytes go to the host as ranges of `data`.
  [[nodiscard]] std::size_t onUpstreamBytes(std::span<const char> data);
  // The deadline() passed (the backstop, a held query's delay, the wait for a cancel's effect).
  void onTimer(Clock::time_point now);
  // A client's CancelRequest matched this session while a query was in flight.
  void onClientCancel();

  // A COPY FROM STDIN's CopyData at the start of `data` that need no decision of their own (no fault
  // pending, nothing failed, within --max-copy-in-bytes) go upstream as one run; returns the bytes
  // taken, 0 when the next frame is for onClientFrame (any other type, a partial or a bad length, one
  // over `maxMessage`, the one that would pass the limit). DBD::Pg and ruby-pg send a CopyData per row.
  // Inline: the session asks before every client frame.
  [[nodiscard]] std::size_t admitCopyInRun(std::span<const char> data, std::uint32_t maxMessage) {
    return batch_.copyIn == Batch::CopyIn::kActive ? copyInRun(data, maxMessage) : 0;
  }

  // A pipeline is read while fewer than this many of its messages await their replies, and while the
  // statement texts only they keep (Parses not yet answered) are under kMaxPendingText. An entry costs
  // about 80 bytes and an Execute is 10; a Parse's text may be megabytes that PostgreSQL, done with
  // it, no longer holds. Without a bound, what the kernel buffers on its way upstream would each become
  // an entry. At the bound the relay sends PostgreSQL a Flush of its own, so the replies it holds back
  // until a Sync or Flush (up to 8 kB of them) come, and the pipeline goes on as they do.
  static constexpr std::size_t kMaxPendingMessages = 16384;
  static constexpr std::size_t kMaxPendingText = 8U * 1024 * 1024;

  // Inline: the session asks before every client frame and read.
  [[nodiscard]] bool acceptingClient() const noexcept {
    if (!batch_.open) return true;
    if (batch_.copyIn != Batch::CopyIn::kNone) return true;  // COPY FROM STDIN: its data flows up
    if (backlogFull()) return false;  // the rest waits in the kernel
    return !batch_.ended;  // an extended batch still open takes its next members
  }
  // A batch is upstream (or held by a delay): the client is only watched for hanging up.
  [[nodiscard]] bool busy() const noexcept { return batch_.open; }
  // Upstream bytes wait (a delay holds the results).
  [[nodiscard]] bool holdingUpstream() const noexcept { return holdUntil_.has_value() && !heldQuery_; }
  // A delay holds the query or its results: a client's cancel ends the hold.
  [[nodiscard]] bool holdingQuery() const noexcept { return holdUntil_.has_value(); }
  [[nodiscard]] std::optional<Clock::time_point> deadline() const noexcept {
    std::optional<Clock::time_point> next = batch_.open ? batch_.deadline : std::nullopt;
    // A cancel request for a held query is noticed when the session is woken; the hold ends here.
    if (holdUntil_ && (!next || *holdUntil_ < *next)) next = holdUntil_;
    return next;
  }
  [[nodiscard]] char transactionStatus() const noexcept { return transactionStatus_; }
  // The upstream's own FATAL error reached the client (it ends the session itself).
  [[nodiscard]] bool upstreamSentFatal() const noexcept { return upstreamSentFatal_; }
  struct Totals {
    std::uint64_t queries = 0;
    std::uint64_t rows = 0;
    std::uint64_t bytes = 0;
  };
  [[nodiscard]] const Totals& totals() const noexcept { return totals_; }

 private:
  // A client message the upstream has yet to answer, oldest first, or the point at which the proxy
  // failed the batch (type 0): its error (Batch::failureAtClient) reaches the client once everything
  // before it has. Small: a batch queues one per message.
  struct Pending {
    explicit Pending(char replyTo = 0) : type(replyTo) {}
    char type = 0;                           // Parse, Bind, Describe, Execute, Close, Sync, Query; 0: failure
    bool ownSync = false;  // Sync: the proxy's (a Query arrived inside the batch); its ReadyForQuery is not relayed
    std::uint32_t retained = 0;  // Parse: the bytes of a text only this entry made (counted in the queue)
    Clock::time_point sent{};
    std::shared_ptr<const std::string> sql;  // Parse, Query: its text; Bind, Execute: the statement's text
    std::string statement;                   // Parse: the name it defines
    std::shared_ptr<const std::string> previous;  // Parse: what that name meant before (restored on error)
  };
  // What the client's prepared statements or portals are, by name: the statement's text (null: not
  // known). The unnamed one, which drivers use for nearly every statement, is kept out of the map, and
  // names are looked up without being copied.
  class Names {
   public:
    [[nodiscard]] std::shared_ptr<const std::string> find(std::string_view name) const {
      if (name.empty()) return unnamed_;
      const auto it = named_.find(name);
      return it == named_.end() ? nullptr : it->second;
    }
    // The name's entry, made (null) when new.
    [[nodiscard]] std::shared_ptr<const std::string>& slot(std::string_view name) {
      if (name.empty()) return unnamed_;
      if (const auto it = named_.find(name); it != named_.end()) return it->second;
      return named_.try_emplace(std::string(name)).first->second;
    }
    void erase(std::string_view name) {
      if (name.empty()) {
        unnamed_.reset();
      } else if (const auto it = named_.find(name); it != named_.end()) {
        named_.erase(it);
      }
    }
    void clear() noexcept {
      unnamed_.reset();
      if (!named_.empty()) named_.clear();
    }

   private:
    struct Hash {
      using is_transparent = void;
      [[nodiscard]] std::size_t operator()(std::string_view name) const noexcept {
        return std::hash<std::string_view>{}(name);
      }
    };
    std::shared_ptr<const std::string> unnamed_;
    std::unordered_map<std::string, std::shared_ptr<const std::string>, Hash, std::equal_to<>> named_;
  };
  // The pending messages, oldest first: a vector read from head_, emptied when the last is answered,
  // so batch after batch reuses one allocation (a deque of them allocated a node every few messages).
  class PendingQueue {
   public:
    [[nodiscard]] bool empty() const noexcept { return head_ == items_.size(); }
    [[nodiscard]] std::size_t size() const noexcept { return items_.size() - head_; }
    // The statement text the entries keep alive that nothing else would (their `retained`).
    [[nodiscard]] std::size_t retainedText() const noexcept { return retained_; }
    [[nodiscard]] Pending& front() noexcept { return items_[head_]; }
    [[nodiscard]] const Pending& front() const noexcept { return items_[head_]; }
    [[nodiscard]] const Pending& back() const noexcept { return items_.back(); }
    void push(Pending&& pending) {
      // A long pipeline answered as it is sent: the answered front is dropped once it is half the queue.
      if (head_ >= kCompactAfter && 2 * head_ >= items_.size()) {
        items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
        head_ = 0;
      }
      retained_ += pending.retained;
      items_.push_back(std::move(pending));
    }
    void pop() noexcept {
      retained_ -= items_[head_].retained;
      if (++head_ == items_.size()) clear();
    }
    void clear() noexcept {
      // A long pipeline's storage is given back: an idle session keeps what a typical batch needs.
      if (items_.capacity() > kKeptCapacity) {
        std::vector<Pending>().swap(items_);
      } else {
        items_.clear();
      }
      head_ = 0;
      retained_ = 0;
    }

   private:
    static constexpr std::size_t kCompactAfter = 64;
    static constexpr std::size_t kKeptCapacity = 256;
    std::vector<Pending> items_;
    std::size_t head_ = 0;
    std::size_t retained_ = 0;
  };
  // The batch upstream, reset by assigning a fresh one.
  struct Batch {
    bool open = false;
    const guardrails::GuardrailSet* rails = nullptr;  // batchRails_
    guardrails::ResultBudget budget{0, 0};
    std::size_t statementsPending = 0;  // Executes and Queries not answered yet: the backstop covers them
    bool ended = false;              // its Sync or Query is upstream: the client waits for ReadyForQuery
    bool upstreamSkipping = false;   // the upstream reported an error: it ignores messages until Sync
    bool clientSkipping = false;     // the proxy failed the batch: the client's messages are dropped until Sync
    bool swallowing = false;         // the client has the proxy's error: upstream replies dropped until ReadyForQuery
    bool swallowedUpstreamError = false;
    bool upstreamCancelled = false;
    bool aborting = false;           // a failing statement was sent to end the upstream's block failed
    bool backstopFired = false;
    bool commitFailed = false;       // the proxy failed a COMMIT: the upstream rolls back, the block is over
    std::optional<Clock::time_point> deadline;  // the backstop, then the wait for the cancel's effect
    std::optional<ProxyError> fatalAtEnd;       // an injected FATAL: the session ends with it at ReadyForQuery
    // The proxy failed the statement the upstream runs: its error goes out once the statement's fate
    // is known (ended by an error, or completed and then committed or not), so it tells the truth.
    std::optional<ProxyError> failure;
    // The proxy failed the batch at the client's position (its Pending of type 0); at most one, as the
    // client's messages are dropped from there to the batch's end.
    std::optional<ProxyError> failureAtClient;
    bool failedStatementCompleted = false;
    // COPY FROM STDIN: the client's CopyData, CopyDone and CopyFail flow up. kAwaitingSync: the COPY
    // came from an Execute whose Sync was already upstream, which PostgreSQL ignored in COPY mode; the
    // client's next Sync (libpq sends one after CopyDone) ends the batch.
    enum class CopyIn { kNone, kActive, kAwaitingSync };
    CopyIn copyIn = CopyIn::kNone;
    bool copySyncIgnored = false;
    bool copyInFailedByProxy = false;  // the proxy sent CopyFail: the client's copy data is dropped
  };
  // The statement whose replies are arriving: its record.
  struct Statement {
    bool open = false;
    observability::QueryRecord record;
    Clock::time_point start{};
    std::optional<std::uint64_t> dropAfterRows;  // fault: drop after_rows (DataRows or a COPY TO's CopyData)
    bool dropMidMessage = false;                 // fault: drop mid_message
    bool dropAtCopyData = false;                 // fault: drop mid_message of a COPY FROM STDIN
    bool copyOut = false;                        // a COPY TO STDOUT: its CopyData count as rows
    std::uint64_t copyInBytes = 0;
  };

  [[nodiscard]] bool backlogFull() const noexcept {
    return pending_.size() >= kMaxPendingMessages || pending_.retainedText() >= kMaxPendingText;
  }

  // ---- client messages (relay.cpp) ----
  void startQuery(const protocol::Frame& frame);
  [[nodiscard]] bool relayExtended(const protocol::Frame& frame);
  void openBatch();
  // A Query or a function call: a batch of one, its record open from the start.
  void openSingleStatementBatch(observability::QueryRecord&& record);
  void closeBatch();
  void endBatchForQuery();
  void pushPending(Pending&& pending);
  void popPending();
  // The proxy failed the batch at the client's current position (a denied Parse, an injected error).
  void failAtClient(const ProxyError& error);
  // The proxy failed the statement the upstream is answering (a limit, COPY, the backstop).
  void failAtFront(const ProxyError& error, bool cancel);
  // The deferred failure goes out, its detail saying what became of the statement.
  void reportFailure(char transactionStatus);
  // COPY FROM STDIN: a client frame while the upstream is in COPY IN mode.
  [[nodiscard]] bool onCopyInFrame(const protocol::Frame& frame);
  [[nodiscard]] std::size_t copyInRun(std::span<const char> data, std::uint32_t maxMessage);
  void startFunctionCall(const protocol::Frame& frame);
  void sendError(const ProxyError& error, bool withReadyForQuery);
  void cancel();

  void emit(std::span<const char> bytes);  // to the client, after the upstream bytes before it
  void sendReadyForQuery();

  // ---- upstream replies (relay_replies.cpp) ----
  // Acts on a frame (whole, or only its prefix for those read so); returns whether it is forwarded.
  [[nodiscard]] bool onReply(const protocol::Frame& frame);
  [[nodiscard]] bool onReadyForQuery(char status);
  [[nodiscard]] bool onErrorResponse(const protocol::Frame& frame);
  [[nodiscard]] bool onDataRow(const protocol::FrameHeader& header);
  // Whether DataRows (a COPY TO's CopyData) now are rows of the statement being executed, counted
  // and nothing more (no fault pending on them, nothing being swallowed): then a run of them is
  // admitted at once.
  [[nodiscard]] bool rowRunOpen() const noexcept;
  // The oldest unanswered message is an Execute or a Query: its rows and completion are a statement's.
  [[nodiscard]] bool executingFront() const noexcept { return !pending_.empty() && executes(pending_.front().type); }
  [[nodiscard]] static bool executes(char front) noexcept {
    return front == protocol::frontend::kExecute || front == protocol::frontend::kQuery;
  }
  // Admits the whole rows from at_ on that fit the statement's budget; returns where they end.
  [[nodiscard]] std::size_t admitRowRun(std::span<const char> data) noexcept;
  // A failure queued at the client's position goes out once it is at the front (checked per frame).
  void reportQueuedFailure() {
    if (!pending_.empty() && pending_.front().type == 0) sendQueuedFailure();
  }
  void sendQueuedFailure();
  // Writes the upstream bytes seen so far and not yet forwarded.
  void flushPending();

  // ---- records and the proxy's errors (relay_records.cpp); faults (relay_faults.cpp) ----
  [[nodiscard]] observability::QueryRecord startRecord(std::string_view sql);
  void openRecord(const Pending& statement);
  // statement_ = Statement{}, keeping the record text's storage in spareSql_.
  void resetStatement();
  void finishRecord();
  void noteError(std::string_view sqlstate, std::string_view message);  // the upstream's
  void noteProxyError(const ProxyError& error);
  [[nodiscard]] const std::shared_ptr<const guardrails::GuardrailSet>& currentGuardrails();
  [[nodiscard]] std::shared_ptr<faults::Rule> firingFault(std::string_view sql, bool extended);
  // A fault for a simple Query at its start; true when the Query does not go upstream as it is.
  [[nodiscard]] bool injectQueryFault(const faults::Rule& rule, const protocol::Frame& frame);
  // An error or drop rule at an Execute; true when the Execute is not forwarded.
  [[nodiscard]] bool injectExecuteFault(const std::shared_ptr<const std::string>& sql);
  void recordAlone(observability::QueryRecord record);
  [[nodiscard]] ProxyError recordDenied(observability::QueryRecord& record, const guardrails::FilterVerdict& verdict);
  void reportGuardrail(std::string_view limit, const std::string& value);
  void releaseHold();
  void cancelHold();
  [[noreturn]] void dropWithRecord(const std::string& reason);
  [[nodiscard]] ProxyError backstopError() const;
  [[nodiscard]] ProxyError breachError(const guardrails::Breach& breach) const;
  [[nodiscard]] static ProxyError copyRefused(bool copyIn);
  // A statement that fails the upstream's block (after the proxy failed one of its statements): a
  // ROLLBACK when that was a COMMIT (a failed COMMIT ends the transaction, as in PostgreSQL).
  void queueAbortingStatement(bool extendedSync);

  RelayContext context_;
  RelayHost& host_;
  char transactionStatus_ = 'I';
  bool upstreamSentFatal_ = false;
  Totals totals_;
  Batch batch_;
  // The batch's client messages awaiting replies, oldest first (kept apart from Batch so its storage
  // is reused from batch to batch).
  PendingQueue pending_;
  Statement statement_;
  std::size_t passThroughRemaining_ = 0;  // bytes of a large frame still streaming through
  bool passThroughDropped_ = false;       // ... and whether they are dropped
  std::shared_ptr<const guardrails::GuardrailSet> rails_;
  std::uint64_t railsVersion_ = 0;
  std::shared_ptr<const guardrails::GuardrailSet> batchRails_;  // the open batch's (Batch::rails), kept after it
  std::string spareSql_;  // storage for the next record's text (what it holds is stale; see resetStatement)
  Names statements_;  // prepared statements: their text
  Names portals_;     // portals: their statement's text
  // Fault injection.
  std::vector<std::shared_ptr<faults::Rule>> faultRules_;
  std::uint64_t faultsVersion_ = 0;
  bool faultsLoaded_ = false;
  std::unordered_map<std::uint64_t, std::uint64_t> faultMatches_;  // per-session match counts by rule
  std::optional<Clock::time_point> holdUntil_;  // delay: the query (heldQuery_) or its results wait until then
  std::optional<std::string> heldQuery_;
  bool failingCommit_ = false;  // the statement the proxy is failing is a COMMIT/END
  bool rejecting_ = false;      // the default mode refused an extended-protocol message: skipping to Sync
  // While onUpstreamBytes runs: its bytes, the frame being looked at, and where forwarding resumes.
  std::span<const char> in_;
  std::size_t at_ = 0;
  std::size_t flushFrom_ = 0;
};

}  // namespace pgwire_proxy::session
