# ruby-pg (libpq): exec_params (extended protocol, unnamed statements), a bytea parameter in binary
# format, a named prepared statement then DEALLOCATE, single-row mode (rows streamed) failing mid-way
# and at once, a 1 MiB parameter.
# Usage: ruby ruby_pg.rb HOST PORT USER DBNAME [STEP...]; prints `STEP JSON` lines, then `done`.
require 'digest'
require 'json'
require 'pg'

STEPS = %w[params rows transaction error big_param failed_cursor close].freeze
FAILS_MIDWAY = 'select 1 / (5000 - g) as v from generate_series(1, 10000) g'.freeze
FAILS_AT_START = 'select * from drivers_no_such_table'.freeze
host, port, user, dbname, *only = ARGV
only = STEPS if only.empty?
$conn = PG.connect(host: host, port: port.to_i, user: user, dbname: dbname)

def emit(step, value)
  puts "#{step} #{JSON.generate(value)}"
  $stdout.flush
end

def state(e)
  [e.result&.error_field(PG::PG_DIAG_SQLSTATE), e.result&.error_field(PG::PG_DIAG_MESSAGE_PRIMARY)]
end

def value(sql, params = [])
  $conn.exec_params(sql, params).getvalue(0, 0)
end

steps = {
  'params' => lambda {
    r = $conn.exec_params(
      'select $1::int4 + 1 as i, $2::text as t, $3::numeric as n, $4::bool as b, $5::date as d,' \
      ' $6::float8 as f, $7::bytea as by, $8::text as nul, $9::int8 as big',
      [41, 'héllo wörld', '1.50', 't', '2024-02-29', 0.25, { value: "\x00\x01\xff".b, format: 1 }, nil,
       9_007_199_254_740_993]
    )
    emit('params', { rows: r.values, types: r.nfields.times.map { |i| r.ftype(i) }, names: r.fields,
                     status: r.cmd_status, ntuples: r.ntuples })
  },
  'rows' => lambda {
    r = $conn.exec_params('select g, md5(g::text) as m from generate_series(1, $1::int) g', [20_000])
    emit('rows', { count: r.ntuples, sum: r.column_values(0).sum(&:to_i),
                   sha256: Digest::SHA256.hexdigest(r.column_values(1).join("\n")) })
  },
  'transaction' => lambda {
    $conn.exec('create temp table drivers_t (id int primary key, v text)')
    $conn.exec('begin')
    3.times { |i| $conn.exec_params('insert into drivers_t values ($1, $2)', [i, "v#{i}"]) }
    inside = value('select count(*) from drivers_t')
    $conn.exec('rollback')
    emit('transaction', { inside: inside, after_rollback: value('select count(*) from drivers_t') })
  },
  'error' => lambda {
    seen = []
    begin; value('select 1 / $1::int', [0]); rescue PG::Error => e; seen << state(e); end
    $conn.exec('begin')
    ['select 1 / $1::int', 'select $1::int'].each do |sql|
      begin; value(sql, [0]); rescue PG::Error => e; seen << state(e); end
    end
    seen << $conn.transaction_status
    $conn.exec('rollback')
    seen << value('select $1::text', ['still alive'])
    emit('error', seen)
  },
  'big_param' => lambda {
    big = 'x' * 1_048_576
    r = $conn.exec_params('select length($1::text), md5($1::text)', [big])
    back = value("select repeat('y', $1::int)", [big.size])
    emit('big_param', { length: r.getvalue(0, 0), md5: r.getvalue(0, 1), returned: back.size })
  },
  'failed_cursor' => lambda {
    seen = []
    [FAILS_MIDWAY, FAILS_AT_START].each do |sql|
      $conn.send_query_params(sql, [])
      $conn.set_single_row_mode
      n = 0
      error = nil
      while (res = $conn.get_result)
        begin
          res.check
          n += res.ntuples
        rescue PG::Error => e
          error = state(e)
        end
        res.clear
      end
      seen << [n, error]
      seen << value('select $1::text', ['after the stream'])
    end
    emit('failed_cursor', seen)
  },
  'close' => lambda {
    seen = []
    $conn.prepare('drivers_s', 'select $1::int * 2')
    3.times { |i| seen << $conn.exec_prepared('drivers_s', [i]).getvalue(0, 0) }
    seen << $conn.describe_prepared('drivers_s').nparams
    seen << $conn.exec('deallocate drivers_s').cmd_status
    begin; $conn.exec_prepared('drivers_s', [1]); rescue PG::Error => e; seen << state(e); end
    seen << value('select $1::text', ['after the close'])
    emit('close', seen)
  }
}
only.each { |step| steps.fetch(step).call }
puts 'done'
$conn.close
