#include "common/server/queue_thread.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "grpcpp/alarm.h"

namespace poolside::server {
namespace {

// The queue the calling thread polls (PollQueue), if any.
thread_local const grpc::CompletionQueue* polled_queue = nullptr;

// An alarm due at once: its tag comes back on the queue thread.
class QueueTask final : public QueueTag {
 public:
  QueueTask(grpc::CompletionQueue* cq, std::function<void()> fn) : fn_(std::move(fn)) {
    alarm_.Set(cq, gpr_time_0(GPR_CLOCK_MONOTONIC), HandOff(this));
  }
  void Proceed(bool /*ok*/) override {
    fn_();
    delete this;
  }

 private:
  ~QueueTask() = default;
  grpc::Alarm alarm_;
  std::function<void()> fn_;
};

}  // namespace

void PollQueue(grpc::CompletionQueue* cq) {
  const grpc::CompletionQueue* const outer = polled_queue;
  polled_queue = cq;
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) {
#ifdef POOLSIDE_QUEUE_TSAN
    __tsan_acquire(tag);  // pairs with HandOff()
#endif
    static_cast<QueueTag*>(tag)->Proceed(ok);
  }
  polled_queue = outer;
}

void RunOnQueue(grpc::CompletionQueue* cq, std::function<void()> fn) {
  new QueueTask(cq, std::move(fn));
}

QueueThread::QueueThread(grpc::CompletionQueue* cq)
    : cq_(cq), thread_(PollQueue, cq), id_(thread_.get_id()) {}

QueueThread::~QueueThread() { Join(); }

void QueueThread::Join() {
  if (IsCurrent()) Abort("a queue thread cannot join itself");
  if (thread_.joinable()) thread_.join();
}

void QueueThread::Abort(const char* what) {
  std::fprintf(stderr, "QueueThread check failed: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

bool QueueThread::On(const grpc::CompletionQueue* cq) {
  return cq != nullptr && polled_queue == cq;
}

}  // namespace poolside::server
