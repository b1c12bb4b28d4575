#ifndef POOLSIDE_COMMON_SERVER_QUEUE_THREAD_H_
#define POOLSIDE_COMMON_SERVER_QUEUE_THREAD_H_

// The queue thread: the one thread that polls a gRPC completion queue and runs
// each operation's tag (QueueTag::Proceed) as it completes. Query and the
// cache sidecar serve every call on one; why is recorded in docs/design.md
// ("Threading: one queue thread").
//
// What runs on a queue thread must never block (no other thread serves the
// queue meanwhile), and state that only it touches needs no lock. Code states
// which side of that line it is on with a check, not a comment:
//
//   QueueThread::AssertOn(cq_);     // handlers, state only the queue touches
//   QueueThread::AssertNotOn(cq_);  // waits for the queue: deadlocks on it
//
// The checks are on in every build, the optimized ones included: each is one
// thread-local read and a comparison (nanoseconds beside a call's tens of
// microseconds), and a violation aborts the process with a message naming
// it, so every test that runs a service checks them.
//
// A thread is `cq`'s queue thread while it runs PollQueue(cq); QueueThread
// runs that on a thread of its own.

#include <functional>
#include <thread>

#include "grpcpp/completion_queue.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define POOLSIDE_QUEUE_TSAN 1
#include <sanitizer/tsan_interface.h>
#endif
#endif

namespace poolside::server {

// What a queue operation's tag points to: Proceed(ok) runs on the queue
// thread when the operation completes (ok as gRPC reports it).
class QueueTag {
 public:
  virtual void Proceed(bool ok) = 0;

 protected:
  ~QueueTag() = default;
};

// Polls `cq` on the calling thread, running each tag's Proceed (every tag on
// it must be a QueueTag), until the queue is shut down and drained. The
// calling thread is `cq`'s queue thread until it returns.
void PollQueue(grpc::CompletionQueue* cq);

// `tag`, for an operation started off the queue thread (a worker's answer):
// under ThreadSanitizer, marks that what the calling thread did before
// happens before the tag's Proceed, which PollQueue pairs with. The
// completion queue guarantees that order, but through Debian's libgrpc,
// which is not built with TSan, so TSan cannot see it and would report each
// access to the call on both threads as a race. Nothing outside TSan builds.
inline QueueTag* HandOff(QueueTag* tag) {
#ifdef POOLSIDE_QUEUE_TSAN
  __tsan_release(tag);
#endif
  return tag;
}

// Runs `fn` on the queue thread of `cq`, soon. The queue must not be shut
// down yet (Server shuts it down after the drain, see server.h).
void RunOnQueue(grpc::CompletionQueue* cq, std::function<void()> fn);

class QueueThread {
 public:
  // Starts a thread that polls `cq` (PollQueue) until the queue is shut down
  // and drained. `cq` outlives this.
  explicit QueueThread(grpc::CompletionQueue* cq);
  // Join().
  ~QueueThread();
  QueueThread(const QueueThread&) = delete;
  QueueThread& operator=(const QueueThread&) = delete;

  // Waits for the thread to end, which it does once the queue has been shut
  // down and every tag on it has come back. Not on the queue thread itself.
  // Idempotent; from one thread at a time.
  void Join();

  grpc::CompletionQueue* queue() const { return cq_; }
  // Whether the calling thread is this one.
  bool IsCurrent() const { return std::this_thread::get_id() == id_; }

  // Whether the calling thread is `cq`'s queue thread (false for null).
  static bool On(const grpc::CompletionQueue* cq);
  // Aborts unless the calling thread is `cq`'s queue thread.
  static void AssertOn(const grpc::CompletionQueue* cq) {
    if (!On(cq)) Abort("queue thread only");
  }
  // Aborts if the calling thread is `cq`'s queue thread (the caller waits for
  // something only that thread can do).
  static void AssertNotOn(const grpc::CompletionQueue* cq) {
    if (On(cq)) Abort("must not run on the queue thread (it waits for the queue)");
  }

 private:
  // Prints `what` and aborts.
  [[noreturn]] static void Abort(const char* what);

  grpc::CompletionQueue* const cq_;
  std::thread thread_;
  const std::thread::id id_;
};

}  // namespace poolside::server

#endif  // POOLSIDE_COMMON_SERVER_QUEUE_THREAD_H_
