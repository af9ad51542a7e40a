// The relay's decision core: the upstream's replies. Frame headers are always read; whole messages
// only for the types that carry a decision; everything else streams on undecoded (DataRow bodies are
// never read), forwarded as ranges of the bytes the session read.
#include "protocol/constants.h"
#include "protocol/messages.h"
#include "protocol/reader.h"
#include "protocol/writer.h"
#include "session/relay.h"
#include "session/session_detail.h"

namespace pgwire_proxy::session {
using namespace detail;
namespace {

namespace fe = protocol::frontend;
namespace be = protocol::backend;

// A ParameterStatus up to this size is read (and noted for --reuse-upstream); a longer one (a
// search_path of megabytes, which newer servers report) streams on unread: the reset's DISCARD ALL
// reports the value the next client would be told.
constexpr std::size_t kMaxReadParameterStatus = 64 * 1024;

bool readsParameterStatus(const protocol::FrameHeader& header) {
  return header.type == be::kParameterStatus && header.frameSize() <= kMaxReadParameterStatus;
}

// The replies that must be held whole before the relay acts on them (all small; a large
// ErrorResponse is read from its prefix).
bool needsWholeFrame(const protocol::FrameHeader& header) {
  const char type = header.type;
  return type == be::kErrorResponse || type == be::kReadyForQuery || type == be::kCommandComplete ||
         readsParameterStatus(header) || type == be::kCopyInResponse || type == be::kCopyOutResponse || type == be::kCopyBothResponse;
}

bool isBatchEnd(char type) { return type == fe::kSync || type == fe::kQuery; }

}  // namespace

void Relay::flushPending() {
  if (at_ > flushFrom_) host_.toClient(in_.subspan(flushFrom_, at_ - flushFrom_));
  flushFrom_ = at_;
}

std::size_t Relay::onUpstreamBytes(std::span<const char> data) {
  in_ = data;
  at_ = 0;
  flushFrom_ = 0;
  // The rest of a frame whose start was already relayed (or dropped) goes the same way.
  if (passThroughRemaining_ > 0) {
    at_ = std::min(passThroughRemaining_, data.size());
    passThroughRemaining_ -= at_;
    if (passThroughDropped_) flushFrom_ = at_;
  }
  while (at_ < data.size()) {
    reportQueuedFailure();
    std::optional<protocol::FrameHeader> header;
    try {
      header = protocol::decodeHeader(data.subspan(at_), kMaxUpstreamMessage);
    } catch (const ProtocolError& error) {
      throw UpstreamFailure{std::string("invalid data from the upstream server: ") + error.what()};
    }
    if (!header) break;
    if ((header->type == be::kDataRow || (header->type == be::kCopyData && statement_.copyOut)) && rowRunOpen()) {
      // The bulk of a large result (a COPY TO's rows are CopyData): no per-row decision beyond its budget.
      if (const std::size_t end = admitRowRun(data); end > at_) {
        at_ = end;
        continue;
      }
    }
    const std::size_t available = data.size() - at_;
    const std::size_t size = header->frameSize();
    if (statement_.dropMidMessage && header->type != be::kCopyInResponse) {
      at_ += std::min(available, std::max<std::size_t>(1, size / 2));
      flushPending();  // half a message, then nothing
      dropWithRecord("fault injected: connection dropped in the middle of a message");
    }
    if (needsWholeFrame(*header)) {
      const bool prefixOnly = streamsWithPrefix(*header);
      if (!prefixOnly && size > kMaxInspectedUpstreamMessage) {
        throw UpstreamFailure{"the upstream server sent an oversized message of type '" + std::string(1, header->type) + "'"};
      }
      // Wait for the whole frame, or for the prefix of one read from its prefix.
      if ((prefixOnly ? kErrorPrefix : size) > available) break;
    }
    // Frames not held whole are acted on by their header alone; their body may not be here yet.
    const protocol::Frame frame{*header, data.subspan(at_, std::min(size, available))};
    const std::size_t frameStart = at_;
    bool forward = true;
    try {
      forward = onReply(frame);
    } catch (const ProtocolError& error) {
      throw UpstreamFailure{std::string("invalid message from the upstream server: ") + error.what()};
    }
    if (size <= available) {
      at_ += size;
    } else {
      passThroughRemaining_ = size - available;
      passThroughDropped_ = !forward;
      at_ = data.size();
    }
    if (!forward) {
      // What was forwarded before a dropped frame still goes (a notification or ParameterStatus
      // among the rows of a statement the relay is swallowing).
      if (frameStart > flushFrom_) host_.toClient(in_.subspan(flushFrom_, frameStart - flushFrom_));
      flushFrom_ = at_;
    }
  }
  if (batch_.open) reportQueuedFailure();
  flushPending();
  const std::size_t consumed = at_;
  in_ = {};
  at_ = flushFrom_ = 0;
  return consumed;
}

bool Relay::onReply(const protocol::Frame& frame) {
  const char type = frame.type();
  if (type == be::kReadyForQuery) {
    protocol::MessageReader reader(frame.body());
    const auto status = static_cast<char>(reader.readByte());
    reader.expectEnd();
    return onReadyForQuery(status);
  }
  if (type == be::kErrorResponse) return onErrorResponse(frame);
  if (readsParameterStatus(frame.header)) {
    const auto parameter = protocol::parseParameterStatus(frame.body());
    host_.upstreamParameter(parameter.name, parameter.value);
  }
  if (!batch_.open) return true;  // NotificationResponse, ParameterStatus, notices between batches
  if (batch_.swallowing) {
    if (type == be::kCommandComplete || type == be::kPortalSuspended || type == be::kEmptyQueryResponse) {
      batch_.deadline.reset();  // the cancel came too late, but the statement has ended
      if (batch_.failure && type != be::kPortalSuspended) {
        batch_.failedStatementCompleted = true;
        // Inside an unfinished batch the proxy fails the transaction at the client's Sync: say so now.
        if (!batch_.ended) reportFailure(protocol::kTxInBlock);
      } else if (batch_.failure) {
        reportFailure(0);  // suspended: its rest was never produced
      }
    }
    if (type == be::kCopyInResponse) {
      // A COPY FROM STDIN in a batch the proxy already failed: nothing of it may be copied.
      std::string out;
      protocol::MessageWriter writer(out);
      protocol::writeCopyFail(writer, "pgwire-proxy failed the batch");
      host_.toUpstream(out);
    }
    // Asynchronous messages still reach the client.
    return type == be::kNotificationResponse || type == be::kParameterStatus;
  }
  const char front = pending_.empty() ? 0 : pending_.front().type;
  const bool executing = executes(front);
  switch (type) {
    case be::kDataRow:
      return !executing || onDataRow(frame.header);
    case be::kCopyData:  // a COPY TO STDOUT's rows, one CopyData each
      return !executing || !statement_.copyOut || onDataRow(frame.header);
    case be::kCommandComplete:
    case be::kEmptyQueryResponse:
    case be::kPortalSuspended:
      if (!executing) return true;
      if (!statement_.open) openRecord(pending_.front());
      batch_.budget.endStatement();
      if (type == be::kCommandComplete) {
        protocol::MessageReader reader(frame.body());
        statement_.record.commandTag.assign(reader.readCString());
        reader.expectEnd();
      }
      if (front == fe::kExecute) {
        finishRecord();
        popPending();
      }
      return true;  // a Query's record ends at its ReadyForQuery (one record for all its statements)
    case be::kParseComplete:
    case be::kBindComplete:
    case be::kCloseComplete:
    case be::kNoData:
      if (front != 0 && !isBatchEnd(front)) popPending();
      return true;
    case be::kRowDescription:
      if (front == fe::kDescribe) popPending();
      return true;
    case be::kCopyInResponse:
    case be::kCopyOutResponse:
      if (context_.fullProtocol && executing) {
        if (!statement_.open) openRecord(pending_.front());
        if (type == be::kCopyOutResponse) {
          statement_.copyOut = true;
          return true;
        }
        batch_.copyIn = Batch::CopyIn::kActive;  // the client's CopyData now flow up
        batch_.copySyncIgnored = front == fe::kExecute && batch_.ended;
        if (statement_.dropMidMessage) {
          statement_.dropMidMessage = false;
          statement_.dropAtCopyData = true;  // mid COPY IN: at the client's first CopyData
        }
        return true;
      }
      [[fallthrough]];
    case be::kCopyBothResponse: {
      const bool copyIn = type == be::kCopyInResponse;
      if (copyIn) {
        // Get the upstream out of COPY FROM STDIN; its error ends the statement (and is dropped).
        std::string out;
        protocol::MessageWriter writer(out);
        protocol::writeCopyFail(writer, "COPY FROM STDIN is not supported by pgwire-proxy");
        // PostgreSQL ignores a Sync read in COPY IN mode: when the batch's Sync came right after this
        // Execute, it was swallowed that way and the upstream needs another to end the batch.
        if (front == fe::kExecute && batch_.ended && pending_.size() == 2 &&
            pending_.back().type == fe::kSync) {
          protocol::writeSync(writer);
        }
        host_.toUpstream(out);
      }
      if (executing && !statement_.open) openRecord(pending_.front());
      failAtFront(copyRefused(copyIn), !copyIn);
      return false;
    }
    default:
      return true;  // ParameterDescription, notices, notifications, parameter status
  }
}

bool Relay::rowRunOpen() const noexcept {
  return batch_.open && !batch_.swallowing && statement_.open && !statement_.dropAfterRows &&
         !statement_.dropMidMessage && executingFront();
}

std::size_t Relay::admitRowRun(std::span<const char> data) noexcept {
  // What onDataRow does for each, added up; the row that would breach, a partial one and a bad
  // length are left to it.
  const auto room = batch_.budget.room();
  std::uint64_t rows = 0;
  std::uint64_t bytes = 0;
  const char rowType = statement_.copyOut ? be::kCopyData : be::kDataRow;
  const std::size_t run = protocol::frameRun(data.subspan(at_), rowType, kMaxUpstreamMessage, [&](std::size_t size) {
    if (rows + 1 > room.rows || bytes + size > room.bytes) return false;
    ++rows;
    bytes += size;
    return true;
  });
  batch_.budget.admitRows(rows, bytes);
  statement_.record.rows += rows;
  statement_.record.bytes += bytes;
  return at_ + run;
}

bool Relay::onDataRow(const protocol::FrameHeader& header) {
  if (!statement_.open) openRecord(pending_.front());
  if (statement_.dropAfterRows && statement_.record.rows >= *statement_.dropAfterRows) {
    flushPending();  // the rows before this one reach the client, then the connection goes
    dropWithRecord("fault injected: connection dropped after " + std::to_string(*statement_.dropAfterRows) + " rows");
  }
  if (const auto breach = batch_.budget.admitRow(header.frameSize())) {
    reportGuardrail(breach->limitName(), breach->kind == guardrails::Breach::Kind::kRows
                                             ? std::to_string(breach->limit)
                                             : guardrails::formatBytes(breach->limit));
    statement_.record.outcome = breach->kind == guardrails::Breach::Kind::kRows
                                    ? observability::QueryOutcome::kLimitRows
                                    : observability::QueryOutcome::kLimitBytes;
    failAtFront(breachError(*breach), true);  // the rows before this one go out first
    return false;
  }
  ++statement_.record.rows;
  statement_.record.bytes += header.frameSize();
  return true;
}

bool Relay::onErrorResponse(const protocol::Frame& frame) {
  const auto fields = errorFieldsOf(frame);
  batch_.budget.endStatement();
  if (fields.isFatal()) {
    upstreamSentFatal_ = true;  // the session ends with the upstream's own error
    return true;
  }
  if (!batch_.open) return true;
  if (batch_.swallowing) {
    batch_.swallowedUpstreamError = true;
    batch_.deadline.reset();  // the cancelled statement has ended
    reportFailure(protocol::kTxFailed);  // ended by the error (the cancel, the CopyFail): as it says
    return false;
  }
  if (!pending_.empty()) {
    Pending& failed = pending_.front();
    if (failed.type == fe::kParse) statements_.slot(failed.statement) = failed.previous;
    if (failed.type == fe::kExecute || failed.type == fe::kParse || failed.type == fe::kBind ||
        failed.type == fe::kQuery) {
      // A statement that failed before it could run is recorded too: the harness shows it.
      if (!statement_.open) openRecord(failed);
      noteError(fields.get('C'), fields.get('M'));
      if (failed.type != fe::kQuery) finishRecord();
    }
  }
  // PostgreSQL ignores the rest of the batch up to its Sync (a Query's rest ends with the Query).
  while (!pending_.empty() && !isBatchEnd(pending_.front().type)) popPending();
  batch_.upstreamSkipping = pending_.empty();
  return true;
}

bool Relay::onReadyForQuery(char status) {
  if (!batch_.open) {
    transactionStatus_ = status;
    return true;
  }
  if (batch_.swallowing && !batch_.swallowedUpstreamError && status == protocol::kTxInBlock && !batch_.aborting) {
    // The batch's end went upstream before the proxy failed it, and the upstream finished the
    // statement inside a transaction block: fail the transaction there too (the next ReadyForQuery
    // says 'E', as the client expects after an error).
    queueAbortingStatement(false);
    return false;
  }
  reportFailure(status);  // what became of the statement the proxy failed, now that it is known
  transactionStatus_ = status;
  const bool ownSync = !pending_.empty() && pending_.front().type == fe::kSync &&
                       pending_.front().ownSync;
  auto fatal = std::move(batch_.fatalAtEnd);
  closeBatch();  // the statement is recorded before the client can see its end
  if (fatal) {
    flushPending();
    throw *fatal;  // an injected FATAL: the session ends with it
  }
  return !ownSync;
}

void Relay::sendQueuedFailure() {
  if (passThroughRemaining_ > 0 || batch_.swallowing) return;
  const ProxyError error = std::move(*batch_.failureAtClient);
  batch_.failureAtClient.reset();
  pending_.pop();
  batch_.swallowing = true;
  batch_.swallowedUpstreamError = false;
  sendError(error, false);  // after the replies before it
}

}  // namespace pgwire_proxy::session
