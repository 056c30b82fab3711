// This program converts a set of images and their emotion distributions to a
// lmdb/leveldb of Datum protos (the JCDL variant of convert_imageset).
// Usage:
//   convert_imageset_r [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME
//
// where ROOTFOLDER is the root folder that holds all the images, and LISTFILE
// is a list of files as well as their distributions, in the format
//   subfolder1/file1.JPEG 0.1 0.7 0 0.2
//   ....
// Each row is normalised to sum 1 and stored as floats in Datum::float_data;
// the image is stored as in convert_imageset (raw BGR bytes or encoded).

#include <fcntl.h>
#include <lmdb.h>
#include <signal.h>
#include <stdint.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>  // NOLINT(readability/streams)
#include <iomanip>
#include <iostream>  // NOLINT(readability/streams)
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "boost/filesystem.hpp"
#include "boost/scoped_ptr.hpp"
#include "gflags/gflags.h"
#include "glog/logging.h"
#include "leveldb/db.h"
#include "leveldb/write_batch.h"

#include "caffe/proto/caffe.pb.h"
#include "caffe/util/db.hpp"
#include "caffe/util/format.hpp"
#include "caffe/util/io.hpp"
#include "caffe/util/rng.hpp"

#ifdef USE_OPENCV
#include <opencv2/core/core.hpp>
#include <opencv2/imgcodecs/imgcodecs.hpp>
#include <opencv2/imgproc/imgproc.hpp>
#endif  // USE_OPENCV

using namespace caffe;  // NOLINT(build/namespaces)
using boost::scoped_ptr;
using std::string;

DEFINE_bool(gray, false,
    "When this option is on, treat images as grayscale ones");
DEFINE_bool(shuffle, false,
    "Randomly shuffle the order of images and their labels");
DEFINE_string(backend, "lmdb",
        "The backend {lmdb, leveldb} for storing the result");
DEFINE_int32(resize_width, 0, "Width images are resized to");
DEFINE_int32(resize_height, 0, "Height images are resized to");
DEFINE_bool(check_size, false,
    "When this option is on, check that all the datum have the same size");
DEFINE_bool(encoded, false,
    "When this option is on, the encoded image will be save in datum");
DEFINE_string(encode_type, "",
    "Optional: What type should we encode the image as ('png','jpg',...).");

namespace {

struct Entry {
  string path;
  std::vector<float> dist;  // normalised to sum 1
  int line;                 // 1-based line number in the list file
};

// Thrown for bad input; main() prints it as one line and exits 1.
struct InputError {
  string message;
};

// SIGINT, SIGTERM or SIGHUP: the conversion stops at its next image, and
// main() removes the partial DB, says so in one line and exits 130 (as jcdl
// convert does).
volatile sig_atomic_t stop_signal = 0;

void on_stop_signal(int sig) { stop_signal = sig; }

struct Interrupted {};

void stop_if_signalled() {
  if (stop_signal) throw Interrupted();
}

string where(const string& file, int line) {
  std::ostringstream s;
  s << file;
  if (line > 0) s << ":" << line;
  return s.str();
}

void fail(const string& file, int line, const string& what) {
  InputError e = { where(file, line) + ": " + what };
  throw e;
}

bool is_file(const string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Reads "path p_1 ... p_K" lines; every value must be a finite number >= 0,
// every row must have the first row's K and a positive, finite sum.
std::vector<Entry> read_list(const string& list, const string& root) {
  std::ifstream file(list.c_str(), std::ios::binary);
  struct stat st;
  if (!file || (stat(list.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
    fail(list, 0, "cannot open the list file");  // a pipe is fine
  }
  std::ostringstream whole;
  whole << file.rdbuf();
  string data = whole.str();
  if (data.compare(0, 2, "\xff\xfe") == 0 ||
      data.compare(0, 2, "\xfe\xff") == 0 ||
      data.find('\0') != string::npos) {
    fail(list, 0, "not UTF-8 text (UTF-16 or binary): save the list file "
         "as UTF-8");
  }
  if (data.compare(0, 3, "\xef\xbb\xbf") == 0) data.erase(0, 3);  // BOM
  std::istringstream infile(data);
  std::vector<Entry> entries;
  std::map<string, int> first_line;  // of each name: jcdl says the same
  string text;
  int line_no = 0;
  size_t K = 0;
  while (std::getline(infile, text)) {
    ++line_no;
    if (!text.empty() && text[text.size() - 1] == '\r') {
      text.erase(text.size() - 1);
    }
    std::istringstream fields(text);
    Entry e;
    e.line = line_no;
    if (!(fields >> e.path)) continue;  // blank line
    if (text.find("\xef\xbb\xbf") != string::npos) {  // jcdl says the same
      fail(list, line_no, "a byte-order mark (U+FEFF) in the line, as where "
           "files saved with one were joined: remove it");
    }
    std::vector<string> tokens;
    string token;
    while (fields >> token) tokens.push_back(token);
    std::vector<double> values;
    for (size_t t = 0; t < tokens.size(); ++t) {
      const string& token = tokens[t];
      errno = 0;
      char* end = NULL;
      const double v = strtod(token.c_str(), &end);
      if (*end != '\0' || end == token.c_str() || errno == ERANGE ||
          !std::isfinite(v)) {
        string what = "'" + token + "' is not a finite number";
        if (t == 0 && tokens.size() > 1) {
          what += " (the first field, '" + e.path + "', is the name: names "
                  "cannot contain spaces)";
        }
        fail(list, line_no, what);
      }
      if (v < 0) fail(list, line_no, "negative value " + token);
      values.push_back(v);
    }
    if (values.empty()) {
      fail(list, line_no, "no distribution after the path (expected "
           "'path p_1 ... p_K')");
    }
    if (K == 0) K = values.size();
    if (values.size() != K) {
      std::ostringstream s;
      s << values.size() << " values, but the first line has " << K;
      fail(list, line_no, s.str());
    }
    double sum = 0;
    for (size_t k = 0; k < K; ++k) sum += values[k];
    if (!std::isfinite(sum)) fail(list, line_no, "values too large");
    if (!(sum > 0)) fail(list, line_no, "all values are zero");
    for (size_t k = 0; k < K; ++k) e.dist.push_back(values[k] / sum);
    if (!is_file(root + e.path)) {
      fail(list, line_no, "image not found: " + root + e.path);
    }
    const int first =
        first_line.insert(std::make_pair(e.path, line_no)).first->second;
    if (first != line_no) {
      std::ostringstream s;
      s << "'" << e.path << "' is listed twice (lines " << first << " and "
        << line_no << "): each image once (the name matches predictions to "
        << "ground truth)";
      fail(list, line_no, s.str());
    }
    entries.push_back(e);
  }
  if (entries.empty()) fail(list, 0, "the list file is empty");
  return entries;
}

// Caffe parses a record with protobuf, which reads at most 2 GB - 1 bytes
// (and a batch's count is an int): a larger image is refused before
// decoding, as jcdl's lmdbio.MAX_RECORD and record_too_large say it.
const double kMaxRecord = 2147483647.0 - (1 << 20);

// The message for an image of h x w x c whose raw record would pass
// protobuf's 2 GB limit, or "".
string record_too_large(double h, double w, int c) {
  if (h * w * c <= kMaxRecord) return "";
  std::ostringstream s;
  s << std::fixed << std::setprecision(0) << w << "x" << h << "x" << c
    << " (WxHxC) is " << h * w * c << " bytes of pixels, more than a Caffe "
    << "record can hold (2 GB)";
  return s.str();
}

// Height and width an encoded image's header (PNG, BMP, JPEG) says, as
// jcdl's lmdbread.image_header reads them; false when it does not say. A
// JPEG's segments are walked by seeking, to its frame header however far
// in (an EXIF segment of 65 KB first), stopping at its first SOS or EOI or
// its end.
bool header_size(const string& path, double* height, double* width) {
  std::ifstream file(path.c_str(), std::ios::binary);
  unsigned char b[26];
  file.read(reinterpret_cast<char*>(b), sizeof(b));
  const size_t n = file.gcount();
  if (n >= 24 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0 &&
      memcmp(b + 12, "IHDR", 4) == 0) {
    *width = static_cast<uint32_t>(b[16]) << 24 | b[17] << 16 | b[18] << 8 |
             b[19];
    *height = static_cast<uint32_t>(b[20]) << 24 | b[21] << 16 | b[22] << 8 |
              b[23];
    return true;
  }
  if (n >= 26 && b[0] == 'B' && b[1] == 'M') {
    if (b[14] == 12 && b[15] == 0 && b[16] == 0 && b[17] == 0) {  // OS/2's
      *width = b[18] | b[19] << 8;
      *height = b[20] | b[21] << 8;
      return true;
    }
    const int32_t w = b[18] | b[19] << 8 | b[20] << 16 |
                      static_cast<uint32_t>(b[21]) << 24;
    const int32_t h = b[22] | b[23] << 8 | b[24] << 16 |
                      static_cast<uint32_t>(b[25]) << 24;
    *width = std::fabs(static_cast<double>(w));
    *height = std::fabs(static_cast<double>(h));
    return true;
  }
  if (n >= 2 && b[0] == 0xff && b[1] == 0xd8) {
    file.clear();
    file.seekg(2);
    char* c = reinterpret_cast<char*>(b);
    for (;;) {
      if (!file.read(c, 2) || b[0] != 0xff) return false;
      const int marker = b[1];
      if (marker == 0xff) {  // a fill byte
        file.seekg(-1, std::ios::cur);
        continue;
      }
      if (marker == 0xd9 || marker == 0xda) return false;  // EOI, SOS
      if (marker == 0xd8 || marker == 0x01 || (marker >= 0xd0 &&
          marker <= 0xd7)) {
        continue;
      }
      if (!file.read(c, 2)) return false;
      const int length = b[0] << 8 | b[1];
      if (marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 &&
          marker != 0xc8 && marker != 0xcc) {  // a start of frame
        if (!file.read(c, 5)) return false;  // precision, height, width
        *height = b[1] << 8 | b[2];
        *width = b[3] << 8 | b[4];
        return true;
      }
      if (length < 2) return false;
      file.seekg(length - 2, std::ios::cur);
    }
  }
  return false;
}

#ifdef USE_OPENCV
// Whether the file decodes, as Caffe's Data layer decodes an encoded Datum
// (natively: IMREAD_UNCHANGED), to exactly img. Not for a grey, 16-bit,
// alpha or EXIF-rotated file read as colour: such a file's own bytes would
// give the net other channels or pixels than the rest, so it is re-encoded.
bool decodes_natively_to(const string& path, const cv::Mat& img) {
  cv::Mat native;
  try {
    native = cv::imread(path, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    return false;
  }
  return native.size() == img.size() && native.type() == img.type() &&
         cv::norm(native, img, cv::NORM_INF) == 0;
}

// An image too large for one record: one line naming the list's line.
void check_record_size(const Entry& e, const string& list,
                       const string& path, double h, double w, int c) {
  const string why = record_too_large(h, w, c);
  if (!why.empty()) {
    fail(list, e.line, "image " + path + ": " + why + ": convert with "
         "--resize_height and --resize_width");
  }
}

// The image as convert_imageset stores it: decoded (and resized) to raw BGR
// bytes, or kept / re-encoded when an encoding is asked for.
void image_to_datum(const Entry& e, const string& list, const string& path,
                    bool is_color, int height, int width, const string& enc,
                    Datum* datum) {
  datum->Clear();
  // the size as decoded (3 channels, or 1 with --gray), whatever the
  // file's own type
  double header_height, header_width;
  if (!(height > 0 && width > 0) &&
      header_size(path, &header_height, &header_width)) {
    check_record_size(e, list, path, header_height, header_width,
                      is_color ? 3 : 1);
  }
  // Decoders such as libpng print their own errors on stderr: keep them
  // quiet, so a bad image gives our one line only.
  fflush(stderr);
  const int saved_stderr = dup(2), devnull = open("/dev/null", O_WRONLY);
  dup2(devnull, 2);
  cv::Mat img;
  try {  // OpenCV throws for a header claiming more than 2^30 pixels
    img = cv::imread(path, is_color ? cv::IMREAD_COLOR :
                                      cv::IMREAD_GRAYSCALE);
  } catch (const cv::Exception&) {
    img.release();
  }
  dup2(saved_stderr, 2);
  close(saved_stderr);
  close(devnull);
  if (!img.data) fail(list, e.line, "cannot decode image " + path);
  if (height > 0 && width > 0) {
    cv::resize(img, img, cv::Size(width, height));
  }
  // what the header did not say (another format)
  check_record_size(e, list, path, img.rows, img.cols, img.channels());
  if (enc.empty()) {
    CVMatToDatum(img, datum);
  } else {
    string ext = path.substr(path.rfind('.') + 1);
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (height == 0 && width == 0 && ext == enc &&
        decodes_natively_to(path, img)) {
      ReadFileToDatum(path, datum);  // the file's own bytes
    } else {
      std::vector<uchar> buf;
      bool ok = false;
      try {
        ok = cv::haveImageWriter("." + enc) && cv::imencode("." + enc, img,
                                                              buf);
      } catch (const cv::Exception&) {
        ok = false;
      }
      if (!ok) {
        fail(list, e.line, "cannot encode image " + path + " as " + enc);
      }
      datum->set_data(string(reinterpret_cast<char*>(&buf[0]), buf.size()));
    }
    datum->set_encoded(true);
  }
  for (size_t k = 0; k < e.dist.size(); ++k) {
    datum->add_float_data(e.dist[k]);
  }
  datum->set_label(0);  // unused: the label is the distribution
}

#endif  // USE_OPENCV

// A write that failed: one line naming the DB (LMDB says EIO for a short
// write, which is the disk filling up).
void write_failed(const string& db, const string& why, int code) {
  struct statvfs st;
  const string dir = boost::filesystem::absolute(db).parent_path().string();
  if (code == ENOSPC || (code == EIO && statvfs(dir.c_str(), &st) == 0 &&
      static_cast<double>(st.f_bavail) * st.f_frsize < (1 << 20))) {
    fail(db, 0, string("cannot write (") + strerror(ENOSPC) + ")");
  }
  fail(db, 0, "cannot write (" + why + ")");
}

// The DB written with LMDB's and LevelDB's own calls, every result
// checked: Caffe's db classes CHECK-abort on any error (a full disk),
// leaving a partial DB behind; here it is one line, and main() removes
// the partial DB. The same files as Caffe's classes write.
class Writer {
 public:
  virtual ~Writer() {}
  virtual void Put(const string& key, const string& value) = 0;
  virtual void Commit() = 0;
  virtual void Close() = 0;
};

class LmdbWriter : public Writer {
 public:
  LmdbWriter(const string& path, const string& name)
      : name_(name), env_(NULL) {
    if (mkdir(path.c_str(), 0744) != 0) write_failed(name, strerror(errno),
                                                     errno);
    // LMDB maps its lock.mdb and writes into the map: on a full disk that
    // kills the process (SIGBUS), so its room is taken first
    const string lock = path + "/lock.mdb";
    const int fd = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    const int rc = fd < 0 ? errno : posix_fallocate(fd, 0, 8192);
    if (fd >= 0) close(fd);
    if (rc != 0) write_failed(name, strerror(rc), rc);
    check(mdb_env_create(&env_));
    check(mdb_env_open(env_, path.c_str(), 0, 0664));
  }
  ~LmdbWriter() { if (env_) mdb_env_close(env_); }
  void Put(const string& key, const string& value) {
    keys_.push_back(key);
    values_.push_back(value);
  }
  void Commit() {
    for (;;) {
      MDB_txn* txn;
      MDB_dbi dbi;
      check(mdb_txn_begin(env_, NULL, 0, &txn));
      int rc = mdb_dbi_open(txn, NULL, 0, &dbi);
      for (size_t i = 0; rc == 0 && i < keys_.size(); ++i) {
        MDB_val key, data;
        key.mv_size = keys_[i].size();
        key.mv_data = const_cast<char*>(keys_[i].data());
        data.mv_size = values_[i].size();
        data.mv_data = const_cast<char*>(values_[i].data());
        rc = mdb_put(txn, dbi, &key, &data, 0);
      }
      if (rc == 0) {
        rc = mdb_txn_commit(txn);  // frees txn, whatever it returns
      } else {
        mdb_txn_abort(txn);
      }
      if (rc != MDB_MAP_FULL) {
        check(rc);
        break;
      }
      MDB_envinfo info;  // as Caffe: double the map and retry
      check(mdb_env_info(env_, &info));
      check(mdb_env_set_mapsize(env_, info.me_mapsize * 2));
    }
    keys_.clear();
    values_.clear();
  }
  void Close() {
    check(mdb_env_sync(env_, 1));
    mdb_env_close(env_);
    env_ = NULL;
  }

 private:
  void check(int rc) {
    if (rc != 0) write_failed(name_, mdb_strerror(rc), rc);
  }
  string name_;
  MDB_env* env_;
  std::vector<string> keys_, values_;
};

class LeveldbWriter : public Writer {
 public:
  LeveldbWriter(const string& path, const string& name)
      : name_(name), db_(NULL) {
    leveldb::Options options;  // Caffe's
    options.block_size = 65536;
    options.write_buffer_size = 268435456;
    options.max_open_files = 100;
    options.error_if_exists = true;
    options.create_if_missing = true;
    check(leveldb::DB::Open(options, path, &db_));
  }
  ~LeveldbWriter() { delete db_; }
  void Put(const string& key, const string& value) { batch_.Put(key, value); }
  void Commit() {
    check(db_->Write(leveldb::WriteOptions(), &batch_));
    batch_.Clear();
  }
  void Close() {
    delete db_;
    db_ = NULL;
  }

 private:
  void check(const leveldb::Status& status) {
    if (!status.ok()) {
      const string why = status.ToString();
      write_failed(name_, why, why.find(strerror(ENOSPC)) != string::npos ?
                   ENOSPC : 0);
    }
  }
  string name_;
  leveldb::DB* db_;
  leveldb::WriteBatch batch_;
};

#ifdef USE_OPENCV
void convert(const std::vector<Entry>& entries, const string& list,
             const string& root, const string& db_path, const string& name) {
  const bool is_color = !FLAGS_gray;
  const int resize_height = std::max<int>(0, FLAGS_resize_height);
  const int resize_width = std::max<int>(0, FLAGS_resize_width);
  const bool encoded = FLAGS_encoded || !FLAGS_encode_type.empty();
  scoped_ptr<Writer> txn(FLAGS_backend == "lmdb" ?
                         static_cast<Writer*>(new LmdbWriter(db_path, name)) :
                         new LeveldbWriter(db_path, name));
  Datum datum;
  size_t data_size = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    stop_if_signalled();
    const Entry& e = entries[i];
    string enc = FLAGS_encode_type;
    if (encoded && enc.empty()) {  // guess the encoding from the file name
      enc = e.path.substr(e.path.rfind('.') + 1);
      std::transform(enc.begin(), enc.end(), enc.begin(), ::tolower);
    }
    image_to_datum(e, list, root + e.path, is_color, resize_height,
                   resize_width, enc, &datum);
    if (FLAGS_check_size) {
      if (i == 0) {
        data_size = datum.data().size();
      } else if (datum.data().size() != data_size) {
        fail(list, e.line, "image " + e.path + " differs in size from the "
             "first one (--check_size)");
      }
    }
    string out;
    CHECK(datum.SerializeToString(&out));
    txn->Put(caffe::format_int(i, 8) + "_" + e.path, out);
    if ((i + 1) % 1000 == 0) {
      txn->Commit();
      std::cerr << "convert_imageset_r: processed " << i + 1 << " of "
                << entries.size() << " images" << std::endl;
    }
  }
  txn->Commit();
  txn->Close();
}
#endif  // USE_OPENCV

// The claim on writing DB_NAME: an flock on .NAME.lock beside it, as jcdl
// takes it (jcdl.files.claim), so a second writer, ours or jcdl's, is
// refused; the kernel releases it when the process ends, however it ends.
struct Claim {
  string path;
  int fd;
  Claim() : fd(-1) {}
  ~Claim() {
    if (fd >= 0) {
      unlink(path.c_str());
      close(fd);
    }
  }
  void take(const string& lock, const string& db) {
    for (;;) {
      const int f = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (f < 0) fail(db, 0, string("cannot write (") + strerror(errno) +
                      ")");
      if (flock(f, LOCK_EX | LOCK_NB) != 0) {
        char holder[32] = {0};
        const ssize_t n = pread(f, holder, sizeof(holder) - 1, 0);
        close(f);
        string pid(holder, n > 0 ? n : 0);
        pid.erase(pid.find_last_not_of(" \n") + 1);
        fail(db, 0, "another process" + (pid.empty() ? string() :
             " (PID " + pid + ")") + " is writing it now: wait for it to "
             "finish, or write elsewhere");
      }
      struct stat held, named;  // its last holder may have removed it
      if (fstat(f, &held) == 0 && stat(lock.c_str(), &named) == 0 &&
          held.st_ino == named.st_ino && held.st_dev == named.st_dev) {
        path = lock;
        fd = f;
        std::ostringstream pid;
        pid << getpid() << "\n";
        if (ftruncate(fd, 0) == 0 &&
            pwrite(fd, pid.str().data(), pid.str().size(), 0) < 0) {
          // a full disk: the lock holds without the PID in it
        }
        return;
      }
      close(f);
    }
  }
};

// The folders made for DB_NAME (create_directories), removed again (those
// left empty, the deepest first) when the run fails, however it fails, as
// jcdl's files.folder_for does: a failed run leaves no new folder. Declared
// before the Claim, so the lock file in the folder is gone first.
struct MadeFolders {
  std::vector<boost::filesystem::path> made;
  bool keep;
  MadeFolders() : keep(false) {}
  ~MadeFolders() {
    for (size_t i = 0; !keep && i < made.size(); ++i) {
      if (rmdir(made[i].c_str()) != 0 && errno != ENOENT) {
        break;  // not empty: it and those above stay
      }
    }
  }
  void make(const boost::filesystem::path& folder,
            boost::system::error_code* error) {
    boost::system::error_code ignored;
    for (boost::filesystem::path p = folder; !p.empty() &&
         !boost::filesystem::exists(boost::filesystem::symlink_status(
             p, ignored)); p = p.parent_path()) {
      made.push_back(p);
    }
    boost::filesystem::create_directories(folder, *error);
  }
};

// Removes the .NAME.partial-PID folders that runs killed before they
// completed left in FOLDER (their process is gone).
void remove_stale_partials(const boost::filesystem::path& folder,
                           const string& name) {
  const string prefix = "." + name + ".partial-";
  boost::system::error_code error;
  boost::filesystem::directory_iterator it(folder, error), end;
  for (; !error && it != end; it.increment(error)) {
    const string entry = it->path().filename().string();
    if (entry.compare(0, prefix.size(), prefix) != 0) continue;
    const string pid = entry.substr(prefix.size());
    if (pid.empty() || pid.find_first_not_of("0123456789") != string::npos)
      continue;
    const long value = atol(pid.c_str());
    if (value != getpid() && kill(value, 0) != 0 && errno == ESRCH) {
      boost::system::error_code ignored;
      boost::filesystem::remove_all(it->path(), ignored);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
#ifdef USE_OPENCV
  ::google::InitGoogleLogging(argv[0]);
  // Progress and errors are our own lines on stderr; glog's INFO lines (the
  // DB's "Opened lmdb ...") only with --minloglevel=0.
  FLAGS_alsologtostderr = 1;
  FLAGS_minloglevel = 1;

#ifndef GFLAGS_GFLAGS_H_
  namespace gflags = google;
#endif

  gflags::SetUsageMessage("Convert a set of images and their emotion\n"
        "distributions to the leveldb/lmdb format used as input for Caffe.\n"
        "Usage:\n"
        "    convert_imageset_r [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME\n"
        "LISTFILE lines are 'relative/path.jpg p_1 p_2 ... p_K' (space\n"
        "separated). Each row is normalised to sum 1 and stored as K floats\n"
        "in Datum::float_data; keys are %08d_<path>. A bad line (a value\n"
        "that is not a finite number >= 0, a count other than the first\n"
        "line's, an all-zero row, a missing or undecodable image) stops the\n"
        "conversion with one message naming the list file and line, exit\n"
        "status 1, and nothing written at DB_NAME. SIGINT, SIGTERM or\n"
        "SIGHUP stop it the same way, with exit status 130.\n");
  gflags::ParseCommandLineFlags(&argc, &argv, true);

  if (argc != 4) {
    gflags::ShowUsageWithFlagsRestrict(argv[0], "tools/convert_imageset_r");
    return 1;
  }
  const string root(argv[1]), list(argv[2]);
  string db_path(argv[3]);
  while (db_path.size() > 1 && db_path[db_path.size() - 1] == '/') {
    db_path.erase(db_path.size() - 1);  // "db/" names the folder db
  }
  // written as .NAME.partial-PID beside it, renamed when complete
  const boost::filesystem::path db_name(db_path);
  const string name = db_name.filename().string();
  const boost::filesystem::path folder = db_name.has_parent_path() ?
      db_name.parent_path() : boost::filesystem::path(".");
  std::ostringstream tmp;
  tmp << (folder / ("." + name + ".partial-")).string() << getpid();
  const string tmp_path = tmp.str();
  struct sigaction stop;
  memset(&stop, 0, sizeof(stop));
  stop.sa_handler = on_stop_signal;
  stop.sa_flags = SA_RESTART;
  sigemptyset(&stop.sa_mask);
  const int stop_signals[] = { SIGINT, SIGTERM, SIGHUP };
  for (int i = 0; i < 3; ++i) {
    struct sigaction before;  // one ignored (nohup) stays ignored
    if (sigaction(stop_signals[i], NULL, &before) == 0 &&
        before.sa_handler != SIG_IGN) {
      sigaction(stop_signals[i], &stop, NULL);
    }
  }
  MadeFolders folders;
  Claim claim;
  try {
    if (db_path.empty()) fail("DB_NAME", 0, "is empty: name the DB");
    const size_t max_name = 255 - std::string("..partial-").size() - 10;
    if (name.size() > max_name) {  // as jcdl's output_path says it
      std::ostringstream s;
      s << "the name is " << name.size() << " bytes long, at most "
        << max_name << ": the file system takes 255 and the temporary "
        << "written beside it (.NAME.partial-PID) needs the rest";
      fail(db_path, 0, s.str());
    }
    if (boost::filesystem::exists(db_path) ||
        boost::filesystem::is_symlink(db_path)) {
      fail(db_path, 0, "already exists; remove it or choose another name");
    }
    if (FLAGS_backend != "lmdb" && FLAGS_backend != "leveldb") {
      fail(FLAGS_backend, 0, "unknown --backend (use lmdb or leveldb)");
    }
    if ((FLAGS_resize_height > 0) != (FLAGS_resize_width > 0)) {
      fail("--resize_height/--resize_width", 0, "give both (or neither)");
    }
    const string too_large = record_too_large(
        std::max(0, FLAGS_resize_height), std::max(0, FLAGS_resize_width),
        FLAGS_gray ? 1 : 3);
    if (!too_large.empty()) {
      fail("--resize_height/--resize_width", 0, too_large + ": choose a "
           "smaller size");
    }
    if (!FLAGS_encode_type.empty() &&
        !cv::haveImageWriter("." + FLAGS_encode_type)) {
      fail(FLAGS_encode_type, 0, "unknown --encode_type (OpenCV cannot "
           "write it; use jpg or png)");
    }
    std::vector<Entry> entries = read_list(list, root);
    if (FLAGS_shuffle) {
      shuffle(entries.begin(), entries.end());
    }
    // The DB's folder, made if needed; then the DB's own folder must be
    // creatable there (the DB backends abort the process when it is not).
    const boost::filesystem::path parent =
        boost::filesystem::absolute(db_path).parent_path();
    boost::system::error_code error;
    folders.make(parent, &error);
    if (error) {
      string why = error.message();
      for (boost::filesystem::path p = parent; !p.empty();
           p = p.parent_path()) {
        if (boost::filesystem::exists(p) &&
            !boost::filesystem::is_directory(p)) {
          why = p.string() + " is a file";
          break;
        }
      }
      fail(db_path, 0, "cannot make its folder " + parent.string() + " (" +
           why + ")");
    }
    claim.take((folder / ("." + name + ".lock")).string(), db_path);
    if (boost::filesystem::exists(db_path) ||
        boost::filesystem::is_symlink(db_path)) {  // written meanwhile
      fail(db_path, 0, "already exists; remove it or choose another name");
    }
    remove_stale_partials(folder, name);
    boost::filesystem::remove_all(tmp_path);
    if (mkdir(tmp_path.c_str(), 0755) != 0) {
      fail(db_path, 0, string("cannot write here (") + strerror(errno) +
           ")");
    }
    rmdir(tmp_path.c_str());
    convert(entries, list, root, tmp_path, db_path);
    stop_if_signalled();
    boost::filesystem::rename(tmp_path, db_path);
    folders.keep = true;
    std::cerr << "convert_imageset_r: wrote " << entries.size()
              << " images with " << entries[0].dist.size()
              << "-value distributions to " << db_path << std::endl;
  } catch (const Interrupted&) {
    boost::system::error_code ignored;
    boost::filesystem::remove_all(tmp_path, ignored);
    const int sig = stop_signal;
    std::cerr << "convert_imageset_r: " << db_path << ": interrupted ("
              << (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" :
                  "SIGHUP") << "), nothing written" << std::endl;
    return 130;
  } catch (const InputError& e) {
    boost::system::error_code ignored;
    boost::filesystem::remove_all(tmp_path, ignored);
    std::cerr << "convert_imageset_r: " << e.message << std::endl;
    return 1;
  } catch (const std::exception& e) {  // filesystem or OpenCV: still one line
    boost::system::error_code ignored;
    boost::filesystem::remove_all(tmp_path, ignored);
    std::cerr << "convert_imageset_r: " << db_path << ": " << e.what()
              << std::endl;
    return 1;
  }
#else
  LOG(FATAL) << "This tool requires OpenCV; compile with USE_OPENCV.";
#endif  // USE_OPENCV
  return 0;
}
